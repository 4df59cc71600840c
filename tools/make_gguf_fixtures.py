#!/usr/bin/env python3
"""GGUF + block-quantization fixtures from the `gguf` package (maintained with llama.cpp).

Setup: pip install gguf numpy
Run from the repository root: python3 tools/make_gguf_fixtures.py

Writes tests/fixtures/gguf/quants.gguf: for each block type T in (Q8_0, Q4_0, Q4_1) and a few
odd-valued inputs, the tensor `T.<case>` holds gguf's quantized bytes and `T.<case>.deq` (F32)
gguf's dequantization of them, and `src.<case>` (F32) the input (also Q5_0); Q4_K/Q5_K/Q6_K
blocks of random bytes with their gguf dequantization (`<T>.rand`, `<T>.rand.deq`); F16 and BF16 copies of the
input and metadata of every GGUF value type (checked by the reader test):
kiln.u8 = 200, kiln.i8 = -100, kiln.u16 = 60000, kiln.i16 = -30000, kiln.u32 = 4000000000,
kiln.i32 = -2000000000, kiln.f32 = 1.5, kiln.bool = true, kiln.str = "kiln ✓", kiln.u64 = 2^40,
kiln.i64 = -2^40, kiln.f64 = 0.1, kiln.arr_i32 = [1, -2, 3], kiln.arr_str = ["a", "bc"].
"""
import os

import numpy as np
import gguf
from gguf import GGMLQuantizationType as T

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "gguf")


def inputs():
    rng = np.random.default_rng(0)
    cases = {
        "normal": rng.standard_normal((3, 96)).astype(np.float32),
        "wide": (rng.standard_normal((2, 64)) * 1000).astype(np.float32),
        "zeros": np.zeros((1, 32), dtype=np.float32),
        "const": np.full((1, 64), -0.75, dtype=np.float32),
        "ties": (np.arange(64, dtype=np.float32).reshape(2, 32) - 31.5) / 8,
    }
    return cases


def main():
    os.makedirs(OUT, exist_ok=True)
    w = gguf.GGUFWriter(os.path.join(OUT, "quants.gguf"), arch="kiln-test")
    w.add_uint8("kiln.u8", 200)
    w.add_int8("kiln.i8", -100)
    w.add_uint16("kiln.u16", 60000)
    w.add_int16("kiln.i16", -30000)
    w.add_uint32("kiln.u32", 4000000000)
    w.add_int32("kiln.i32", -2000000000)
    w.add_float32("kiln.f32", 1.5)
    w.add_bool("kiln.bool", True)
    w.add_string("kiln.str", "kiln ✓")
    w.add_uint64("kiln.u64", 2**40)
    w.add_int64("kiln.i64", -(2**40))
    w.add_float64("kiln.f64", 0.1)
    w.add_array("kiln.arr_i32", [1, -2, 3])
    w.add_array("kiln.arr_str", ["a", "bc"])
    for name, x in inputs().items():
        w.add_tensor(f"src.{name}", x)
        w.add_tensor(f"F16.{name}", x.astype(np.float16))
        w.add_tensor(f"BF16.{name}", gguf.quants.quantize(x, T.BF16), raw_dtype=T.BF16)
        for qt in (T.Q8_0, T.Q4_0, T.Q4_1, T.Q5_0):
            q = gguf.quants.quantize(x, qt)
            w.add_tensor(f"{qt.name}.{name}", q, raw_dtype=qt)
            w.add_tensor(f"{qt.name}.{name}.deq", gguf.quants.dequantize(q, qt).astype(np.float32))
    # K-quants: gguf dequantizes but does not quantize them, so the blocks are random bytes
    # with sane f16 super-block scales; `<T>.rand.deq` is gguf's dequantization.
    rng = np.random.default_rng(1)
    for qt, scale_at in ((T.Q4_K, (0, 2)), (T.Q5_K, (0, 2)), (T.Q6_K, (208,))):
        size = gguf.GGML_QUANT_SIZES[qt][1]
        blocks = rng.integers(0, 256, size=(3, size), dtype=np.uint8)
        for at in scale_at:
            blocks[:, at:at + 2] = (rng.uniform(0.001, 0.1, size=(3, 1)).astype(np.float16)).view(np.uint8)
        w.add_tensor(f"{qt.name}.rand", blocks, raw_dtype=qt)
        w.add_tensor(f"{qt.name}.rand.deq", gguf.quants.dequantize(blocks, qt).astype(np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    print("wrote", os.path.join(OUT, "quants.gguf"), os.path.getsize(os.path.join(OUT, "quants.gguf")), "bytes")


if __name__ == "__main__":
    main()
