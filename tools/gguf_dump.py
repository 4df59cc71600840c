#!/usr/bin/env python3
"""Reads a GGUF file with the `gguf` package (maintained with llama.cpp) and dumps what it saw,
so kiln's tests can check kiln's GGUF writer against an independent reader.

    python3 tools/gguf_dump.py FILE.gguf OUT_PREFIX

Writes OUT_PREFIX.json (metadata: key → value, arrays as their length and first items; tensors:
name, type, shape in ggml order, byte offset into OUT_PREFIX.f32) and OUT_PREFIX.f32 (every
tensor dequantized by gguf's numpy code, in file order). Needs: pip install gguf numpy.
"""
import json
import sys

import numpy as np
import gguf


def value(field):
    t = field.types[0] if field.types else None
    if t == gguf.GGUFValueType.ARRAY:
        items = field.contents()
        return {"len": len(items), "head": items[:4]}
    return field.contents()


def main():
    path, prefix = sys.argv[1], sys.argv[2]
    r = gguf.GGUFReader(path)
    meta = {k: value(f) for k, f in r.fields.items() if not k.startswith("GGUF.")}
    tensors, offset = [], 0
    with open(prefix + ".f32", "wb") as out:
        for t in r.tensors:
            x = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32).reshape(-1)
            out.write(x.tobytes())
            tensors.append({"name": t.name, "type": t.tensor_type.name, "shape": [int(d) for d in t.shape],
                            "offset": offset, "n": int(x.size)})
            offset += x.size
    with open(prefix + ".json", "w") as f:
        json.dump({"version": r.fields["GGUF.version"].contents(), "metadata": meta, "tensors": tensors}, f)


if __name__ == "__main__":
    main()
