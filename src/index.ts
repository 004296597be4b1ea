export { Store, withStore, DEFAULT_DB_PATH } from './store/store.js';
