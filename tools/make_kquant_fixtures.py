#!/usr/bin/env python3
"""K-quant quantization fixtures from llama.cpp's own C reference quantizers.

The `gguf` package dequantizes K-quants but does not quantize them, so this script compiles
llama.cpp's `ggml-quants.c` (taken from the llama-cpp-python source package on PyPI, which
vendors llama.cpp) into a small shared library and calls `quantize_row_q{4,5,6}_K_ref` through
ctypes. kiln's quantizers must produce the same bytes.

Setup: pip install gguf numpy; a C compiler (cc).
Run from the repository root: python3 tools/make_kquant_fixtures.py

Writes tests/fixtures/gguf/kquants.gguf: `src.<case>` (F32) inputs and `<T>.<case>` the bytes
llama.cpp's reference quantizer gives for T in Q4_K, Q5_K, Q6_K. The compiled library and the
source are cached under target/tmp/llama-src.
"""
import ctypes
import json
import os
import subprocess
import tarfile
import urllib.parse
import urllib.request

import numpy as np
import gguf
from gguf import GGMLQuantizationType as T

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
OUT = os.path.join(ROOT, "tests", "fixtures", "gguf")
CACHE = os.path.join(ROOT, "target", "tmp", "llama-src")
VERSION = "0.3.36"  # llama-cpp-python; its vendor/llama.cpp is the reference


def sdist() -> str:
    path = os.path.join(CACHE, f"llama_cpp_python-{VERSION}.tar.gz")
    if not os.path.exists(path):
        os.makedirs(CACHE, exist_ok=True)
        meta = json.load(urllib.request.urlopen(f"https://pypi.org/pypi/llama-cpp-python/{VERSION}/json"))
        url = next(u["url"] for u in meta["urls"] if u["packagetype"] == "sdist")
        url = urllib.parse.urljoin(f"https://pypi.org/pypi/llama-cpp-python/{VERSION}/json", url)
        urllib.request.urlretrieve(url, path + ".part")
        os.replace(path + ".part", path)
    return path


def library() -> ctypes.CDLL:
    lib = os.path.join(CACHE, "libggml-quants-ref.so")
    if not os.path.exists(lib):
        top = f"llama_cpp_python-{VERSION}/vendor/llama.cpp/ggml"
        with tarfile.open(sdist()) as tar:
            members = [m for m in tar.getmembers() if m.name.startswith(top + "/include/")
                       or m.name.startswith(top + "/src/ggml-cpu/") and m.name.endswith(".h")
                       or m.name in (f"{top}/src/ggml-quants.c", f"{top}/src/ggml-quants.h",
                                     f"{top}/src/ggml-common.h", f"{top}/src/ggml-impl.h")]
            tar.extractall(CACHE, members=members, filter="data")
        g = os.path.join(CACHE, top)
        # ggml-quants.c calls into ggml.c only on paths these fixtures never take (validation,
        # errors): stubs that abort stand in for them.
        stubs = os.path.join(CACHE, "stubs.c")
        with open(stubs, "w") as f:
            f.write("#include <stdlib.h>\n#include <stddef.h>\n"
                    "void ggml_abort(const char *f, int l, const char *fmt, ...) { abort(); }\n"
                    "size_t ggml_row_size(int t, long n) { abort(); }\n"
                    "const char *ggml_type_name(int t) { abort(); }\n"
                    "size_t ggml_type_size(int t) { abort(); }\n")
        # No -march and no fast-math: plain IEEE f32 in source order, as kiln computes.
        subprocess.run(["cc", "-O2", "-fPIC", "-shared", "-ffp-contract=off", f"-I{g}/include", f"-I{g}/src",
                        f"-I{g}/src/ggml-cpu", "-o", lib, f"{g}/src/ggml-quants.c", stubs, "-lm"], check=True)
    return ctypes.CDLL(lib)


def inputs():
    rng = np.random.default_rng(5)
    sub = np.repeat(rng.uniform(0.2, 3.0, size=(1, 32)), 32, axis=1).reshape(4, 256)
    spike = (rng.standard_normal(512) * 0.02).astype(np.float32)
    spike[[7, 300]] = [1.5, -2.0]
    return {
        # Sub-blocks of 32 with their own scales, as weight rows have.
        "rows": (rng.standard_normal((4, 256)) * sub * 0.05).astype(np.float32),
        "normal": rng.standard_normal(768).astype(np.float32),
        "positive": rng.uniform(0.5, 1.5, 256).astype(np.float32),
        "spike": spike,
        "zeros": np.zeros(256, dtype=np.float32),
        "const": np.full(256, -0.75, dtype=np.float32),
        "tiny": (rng.standard_normal(256) * 1e-6).astype(np.float32),
    }


def main():
    lib = library()
    os.makedirs(OUT, exist_ok=True)
    path = os.path.join(OUT, "kquants.gguf")
    w = gguf.GGUFWriter(path, arch="kiln-test")
    for name, x in inputs().items():
        x = np.ascontiguousarray(x.reshape(-1), dtype=np.float32)
        w.add_tensor(f"src.{name}", x)
        for qt, fn in ((T.Q4_K, lib.quantize_row_q4_K_ref), (T.Q5_K, lib.quantize_row_q5_K_ref),
                       (T.Q6_K, lib.quantize_row_q6_K_ref)):
            block, size = gguf.GGML_QUANT_SIZES[qt]
            out = np.zeros((x.size // block, size), dtype=np.uint8)
            fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64]
            fn(x.ctypes.data, out.ctypes.data, x.size)
            # Cross-check the C output with gguf's dequantizer before trusting it.
            back = gguf.quants.dequantize(out, qt).reshape(-1)
            err = np.sqrt(np.mean((back - x) ** 2)) / max(np.sqrt(np.mean(x ** 2)), 1e-30)
            # (Values near 1e-6 underflow the f16 scales: there only the bytes are compared.)
            assert err < 0.2 or name == "tiny", (qt.name, name, err)
            w.add_tensor(f"{qt.name}.{name}", out, raw_dtype=qt)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    print("wrote", path, os.path.getsize(path), "bytes")


if __name__ == "__main__":
    main()
