/**
 * A minimal writer for ONNX model files (the `ModelProto` protobuf of onnx.proto, IR version 7, default opset 11),
 * enough to build small test graphs that onnxruntime loads exactly as it loads an exported model.
 * Only the fields used here are encoded; field numbers are those of onnx.proto.
 */

/** TensorProto.DataType values. */
export const ONNX_FLOAT = 1;
export const ONNX_INT64 = 7;

export interface OnnxTensor {
  name: string;
  dims: number[];
  /** FLOAT (Float32Array) or INT64 (BigInt64Array), little-endian raw data. */
  data: Float32Array | BigInt64Array;
}

export type OnnxAttribute = number | number[] | string;

export interface OnnxNode {
  op: string;
  inputs: string[];
  outputs: string[];
  /** Integers are written as INT/INTS, other numbers as FLOAT, strings as STRING. */
  attributes?: Record<string, OnnxAttribute>;
}

export interface OnnxValue {
  name: string;
  elemType: number;
  /** A number is a fixed size, a string a symbolic (dynamic) dimension. */
  shape: Array<number | string>;
}

export interface OnnxGraph {
  name: string;
  nodes: OnnxNode[];
  initializers: OnnxTensor[];
  inputs: OnnxValue[];
  outputs: OnnxValue[];
  opset?: number;
}

/** Protobuf wire encoding: varint (0), length-delimited (2) and fixed32 (5) fields. */
class ProtoWriter {
  private readonly parts: Uint8Array[] = [];

  private varint(value: bigint): void {
    // Negative int64 values are written as their 64-bit two's complement, as protobuf does.
    let v = BigInt.asUintN(64, value);
    const bytes: number[] = [];
    while (v >= 0x80n) {
      bytes.push(Number(v & 0x7fn) | 0x80);
      v >>= 7n;
    }
    bytes.push(Number(v));
    this.parts.push(Uint8Array.from(bytes));
  }

  private tag(field: number, wireType: number): void {
    this.varint(BigInt((field << 3) | wireType));
  }

  int(field: number, value: number | bigint): this {
    this.tag(field, 0);
    this.varint(BigInt(value));
    return this;
  }

  float(field: number, value: number): this {
    this.tag(field, 5);
    const buffer = new Uint8Array(4);
    new DataView(buffer.buffer).setFloat32(0, value, true);
    this.parts.push(buffer);
    return this;
  }

  bytes(field: number, value: Uint8Array): this {
    this.tag(field, 2);
    this.varint(BigInt(value.length));
    this.parts.push(value);
    return this;
  }

  string(field: number, value: string): this {
    return this.bytes(field, new TextEncoder().encode(value));
  }

  message(field: number, build: (writer: ProtoWriter) => void): this {
    const inner = new ProtoWriter();
    build(inner);
    return this.bytes(field, inner.finish());
  }

  finish(): Uint8Array {
    const total = this.parts.reduce((n, p) => n + p.length, 0);
    const out = new Uint8Array(total);
    let offset = 0;
    for (const part of this.parts) {
      out.set(part, offset);
      offset += part.length;
    }
    return out;
  }
}

function writeTensor(w: ProtoWriter, tensor: OnnxTensor): void {
  for (const d of tensor.dims) w.int(1, d); // dims
  w.int(2, tensor.data instanceof Float32Array ? ONNX_FLOAT : ONNX_INT64); // data_type
  w.string(8, tensor.name); // name
  const expected = tensor.dims.reduce((n, d) => n * d, 1);
  if (tensor.data.length !== expected) throw new Error(`initializer ${tensor.name}: ${tensor.data.length} values for dims [${tensor.dims}]`);
  // raw_data is little-endian; typed arrays are little-endian on every platform Node supports.
  w.bytes(9, new Uint8Array(tensor.data.buffer, tensor.data.byteOffset, tensor.data.byteLength));
}

function writeAttribute(w: ProtoWriter, name: string, value: OnnxAttribute): void {
  w.string(1, name);
  if (typeof value === 'string') w.string(4, value).int(20, 3); // s, type STRING
  else if (Array.isArray(value)) {
    for (const v of value) w.int(8, v);
    w.int(20, 7); // ints, type INTS
  } else if (Number.isInteger(value)) w.int(3, value).int(20, 2); // i, type INT
  else w.float(2, value).int(20, 1); // f, type FLOAT
}

function writeValueInfo(w: ProtoWriter, value: OnnxValue): void {
  w.string(1, value.name);
  w.message(2, (type) => type.message(1, (tensor) => { // TypeProto.tensor_type
    tensor.int(1, value.elemType);
    tensor.message(2, (shape) => {
      for (const dim of value.shape) {
        shape.message(1, (d) => (typeof dim === 'number' ? d.int(1, dim) : d.string(2, dim)));
      }
    });
  }));
}

/** Serialises a graph as an ONNX model file's bytes. */
export function encodeOnnxModel(graph: OnnxGraph): Uint8Array {
  const model = new ProtoWriter();
  model.int(1, 7); // ir_version
  model.string(2, 'aspo-test-onnx-writer'); // producer_name
  model.message(7, (g) => { // graph
    graph.nodes.forEach((node, i) => g.message(1, (n) => {
      for (const input of node.inputs) n.string(1, input);
      for (const output of node.outputs) n.string(2, output);
      n.string(3, `${node.op}_${i}`);
      n.string(4, node.op);
      for (const [name, value] of Object.entries(node.attributes ?? {})) n.message(5, (a) => writeAttribute(a, name, value));
    }));
    g.string(2, graph.name);
    for (const tensor of graph.initializers) g.message(5, (t) => writeTensor(t, tensor));
    for (const input of graph.inputs) g.message(11, (v) => writeValueInfo(v, input));
    for (const output of graph.outputs) g.message(12, (v) => writeValueInfo(v, output));
  });
  model.message(8, (o) => o.string(1, '').int(2, graph.opset ?? 11)); // opset_import
  return model.finish();
}
