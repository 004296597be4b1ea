/**
 * Every stage's tables, registered with the store: importing this module is what lets `Store.open` create and migrate
 * a store. The store imports no stage; each stage's schema.ts defines and registers its own migrations.
 */
import './ingest/schema.js';
import './segment/schema.js';
import './train/schema.js';
import './score/schema.js';
import './rewards/schema.js';

export { registeredMigrations, type Migration } from './store/migrations.js';
