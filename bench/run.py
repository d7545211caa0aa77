"""The whole product on this machine, in one run: one JSON file and one Markdown report.

Every case runs in its own fresh process (`python bench/run.py --case NAME`),
so that each reports its own peak memory (the maximum resident set size of
the process that did the measuring) and no case warms another one's caches.
The cases reuse the functions of the other scripts in this folder:

0. The roofline (`roofline`): the machine's memory read bandwidth, with one
   thread and with the threads onnxruntime decodes with (the fastest of three
   numpy readers). Each generation row gets the weight bytes a step reads,
   its roofline (batch x bandwidth / bytes) and its share of it.
1. Greedy generation (`bench/generate.py`): the `gpt2` (124M) configuration,
   randomly initialised with seed 0 (the same weights in every process),
   batch 1 and batch 8 of its PROMPTS (and batch 32, the prompts repeated,
   for ours onnx and the two torch contenders), 128 new tokens per row,
   end-of-text ignored. Contenders:
   - ours keras float32: `backends.generation.generate`, what `gpt2reg generate` runs;
   - ours onnx float32 / ours onnx int8 / ours litert int8: the same with
     `runtime="onnx"` or `"litert"`, int8 after `lm.backbone.quantize("int8")`
     (skipped, with the reason, where `generate` has no such runtime);
   - stock KerasHub float32: `GPT2CausalLM.generate`;
   - HF transformers + torch float32, and HF torch dynamic int8
     (`torch.ao.quantization.quantize_dynamic` on the Linear layers, after
     GPT-2's `Conv1D` layers are replaced by equivalent `nn.Linear` ones and
     the logits checked unchanged), on the same weights exported as
     `gpt2reg export --format hf` does.
   The first call (compilation, graph building) is timed on its own; the
   steady state is the median of `--repeats` calls. Tokens/s counts the new
   tokens of all rows. Each contender is compared with stock KerasHub float32
   at the same batch size, ours onnx float32 and int8 with transformers +
   torch float32 and torch's dynamic int8, and each "ours" contender's
   batch-1 tokens with ours keras float32 (the length of the common greedy
   prefix).
2. Training (`bench/train.py`): full fine-tuning and LoRA (rank 8, query and
   value) median step times, `gpt2`, sequence 256, batch 4, float32, XLA as
   `gpt2reg finetune` chooses it; and the same full step in a plain PyTorch
   loop. Tokens/s and the ratio ours / PyTorch.
3. Perplexity scoring (`bench/evaluate.py`): `backends.scoring.score` against
   a bare compiled forward pass over the same tokens; and (`scoring-runtime`)
   `backends.perplexity.RuntimeScorer`, what `evaluate` runs without
   TensorFlow, against a bare forward pass of the same onnxruntime graph (its
   prefill and the logits of every token).
4. Tokenization: megabytes/s over a few MB of text (the Python standard
   library's own `.py` files, read from this machine): ours
   (`backends.tokenizer.encode_batch`, what `finetune` and `evaluate` use on
   their data), tiktoken itself (one `encode_ordinary` per document on the
   encoding ours builds) and KerasHub's `GPT2Tokenizer`; the ids of all three
   are compared on a sample.
5. `gpt2reg --help` start time: the median of 5 runs of the console script.
6. From `import registry` to a loaded `tiny` variant: the median of 3 fresh
   processes running `registry.Registry(home).get("tinyv").load()` on a
   scratch home made with `gpt2reg create tinyv --config tiny`.
7. Logging overhead: the median training step time of a 60-step `tiny`
   fine-tune run through `Registry.run("finetune", ...)` (the progress
   sink `gpt2reg` uses, the run recorded to MLflow and the lineage store)
   against the same plan through `backends.training.train` alone, after an
   untimed warm-up run, `--repeats` rounds alternating which path goes first.
   Per-step figures are streamed to the MLflow run while it trains (a batch at
   most every 2 s, inside the timed steps); what is left when the run is
   recorded goes in one call, timed too and shown spread over the steps.

8. Light inference (`light-*`): cold `gpt2reg generate` in a fresh process,
   wall and peak RSS, on a `tiny` variant (the quickstart's size: 20 new
   tokens) and a `gpt2` (124M) one (8 new tokens), each made with `gpt2reg
   create`: the first call (which writes the runtime graph), the median of
   `--repeats` later ones, and the same with `--runtime keras` (the path every
   call took before, through TensorFlow). Then, in one process, repeated
   `Registry.stream` calls on the `gpt2` variant: seconds from the call to its
   first token (prefill included), float32 and int8. And the same cold
   generate through Hugging Face transformers + torch on the same weights
   (exported with `gpt2reg export --format hf`), in a fresh process.

9. Serving (`light-serve`): `mlflow models serve --env-manager local` of a
   `tiny` variant: seconds until it answers `/ping`, its first request, then
   1 and 4 concurrent clients, each sending a 1-token and a 64-token request
   in turn: time to first token (the 1-token request: the pyfunc answers
   whole) and steady tokens/s (the 64-token one), p50 and p99.

10. How cost grows (`growth`, `bench/growth.py`): our onnxruntime decoder,
   float32 and int8, on random weights: tokens/s against context (64 to
   1,000 tokens in the cache), batch size (1, 8, 32) and model size (`tiny`
   to `gpt2-large`), as a table and a plot (`run-<timestamp>-growth.png`).

Peak memory is that of the whole measuring process: a Hugging Face row's
includes the Keras model its weights were exported from, and both logging
rows share one process. Run it on otherwise idle cores: other work slows
every contender, torch's threads (which wait for each other) most of all; the
report flags a machine that was busy when the run began.

Ratios, not absolute times, are the goals (the goals table at the end): the
seconds depend on the machine, the ratios much less. Where a contender is
missing (a library not installed, a runtime not yet built) its rows say so.

    python bench/run.py [--repeats 3] [--quick] [--only CASE[,CASE]] [--skip CASE[,CASE]]
                        [--device cpu|gpu] [--no-hf] [--out bench/results]

`--quick` runs every case on the `tiny` configuration with 16 new tokens,
1 repeat and small texts: a check that the script works, in a few minutes,
not a measurement. `--only` and `--skip` take case names (see `--list`) or a
group (`generate`, `train`, `tokenize`). `--device gpu` is meant for a
machine with a GPU: the Keras/TensorFlow and PyTorch cases run on the GPU
(onnxruntime, LiteRT and torch's dynamic int8 stay on the CPU); `--device cpu`
(the default) hides any GPU from every case. Writes `run-<timestamp>.json`
and `run-<timestamp>.md` into `--out`, and prints the Markdown. Run through
MLflow (`MLFLOW_TRACKING_URI` set, or inside an MLflow run), it also logs
them and the plot as the run's artifacts under `bench/`, and each goal's
figure as a metric.
"""

from __future__ import annotations

import argparse
import atexit
import datetime
import hashlib
import importlib.metadata
import importlib.util
import json
import math
import os
import platform
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent))  # the repository root: `backends`, `registry` and `plugins`

# Generation contenders: (case, label, runtime for ours or None, quantized to int8).
OURS = [
    ("generate-keras", "ours keras float32", "keras", False),
    ("generate-onnx", "ours onnx float32", "onnx", False),
    ("generate-onnx-int8", "ours onnx int8", "onnx", True),
    ("generate-litert-int8", "ours litert int8", "litert", True),
]
STOCK = "stock KerasHub float32"
HF = "HF transformers + torch float32"
HF_INT8 = "HF torch dynamic int8"

CASES = [  # (case, section), in the order they run
    ("roofline", "roofline"),
    *[(case, "generation") for case, *_ in OURS],
    ("generate-stock", "generation"),
    ("generate-hf", "generation"),
    ("generate-hf-int8", "generation"),
    ("train-full", "training"),
    ("train-lora", "training"),
    ("train-torch", "training"),
    ("scoring", "scoring"),
    ("scoring-runtime", "scoring"),
    ("tokenize-ours", "tokenization"),
    ("tokenize-tiktoken", "tokenization"),
    ("tokenize-keras", "tokenization"),
    ("cli-help", "start-up"),
    ("load-tiny", "start-up"),
    ("logging", "logging overhead"),
    ("light-tiny", "light inference"),
    ("light-gpt2", "light inference"),
    ("light-repeated", "light inference"),
    ("light-hf", "light inference"),
    ("light-serve", "serving"),
    ("growth", "cost growth"),
]
NEEDS_HF = {"generate-hf", "generate-hf-int8", "train-torch", "light-hf"}  # transformers + torch
TORCH_PEER = {"generate-onnx": "generate-hf", "generate-onnx-int8": "generate-hf-int8"}
WIDE_BATCH_CASES = {"generate-onnx", "generate-onnx-int8", "generate-hf", "generate-hf-int8"}


@dataclass(frozen=True)
class Settings:
    """What every case measures; `--quick` shrinks it to a smoke test."""

    quick: bool
    repeats: int
    device: str
    generate_config: str = "gpt2"
    new_tokens: int = 128
    batch_sizes: tuple[int, ...] = (1, 8)
    # The contenders compared at large batches (ours onnx against torch): batch 32 too.
    wide_batch_sizes: tuple[int, ...] = (1, 8, 32)
    train_config: str = "gpt2"
    train_steps: int = 6  # bench/train.py's defaults
    train_seq_len: int = 256
    train_batch_size: int = 4
    lora_rank: int = 8
    score_config: str = "gpt2"
    score_batch_size: int = 4  # bench/evaluate.py's defaults
    score_length: int = 1024
    score_batches: int = 2
    tokenize_bytes: int = 4_000_000
    sample_bytes: int = 256_000  # the part whose ids the three tokenizers must agree on
    help_runs: int = 5
    load_runs: int = 3
    logging_config: str = "tiny"
    logging_steps: int = 60
    logging_data_bytes: int = 400_000
    light_runs: int = 5
    light_big_config: str = "gpt2"
    growth_steps: int = 16
    growth_sizes: tuple[str, ...] = ("tiny", "gpt2", "gpt2-medium", "gpt2-large")

    @classmethod
    def from_args(cls, args) -> Settings:
        if not args.quick:
            return cls(quick=False, repeats=args.repeats, device=args.device)
        return cls(quick=True, repeats=1, device=args.device, generate_config="tiny", new_tokens=16,
                   wide_batch_sizes=(1, 8), growth_steps=4, growth_sizes=("tiny",),
                   train_config="tiny", train_steps=3, train_seq_len=64, score_config="tiny", score_length=128,
                   score_batches=1, tokenize_bytes=300_000, sample_bytes=100_000, help_runs=3, load_runs=1,
                   logging_steps=20, logging_data_bytes=200_000, light_runs=2, light_big_config="tiny")


# ---------------------------------------------------------------- helpers shared by the cases


def bench_module(name: str):
    """bench/<name>.py as a module: loaded by path, because `train` or `evaluate` may also be
    the name of an installed package."""
    spec = importlib.util.spec_from_file_location(f"_bench_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # as an import would: dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def own_peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kilobytes on Linux


def measure_process(command: list[str], env: dict | None = None, timeout: float | None = None) -> dict:
    """Run a command: its wall seconds, exit code, output and peak RSS (MB).

    os.wait4 gives this one child's own resource usage, where getrusage(RUSAGE_CHILDREN)
    would mix every child this process ever waited for.
    """
    with tempfile.TemporaryFile("w+") as stdout, tempfile.TemporaryFile("w+") as stderr:
        started = time.perf_counter()
        process = subprocess.Popen(command, stdout=stdout, stderr=stderr, env=env)
        deadline = None if timeout is None else started + timeout
        while True:
            pid, status, usage = os.wait4(process.pid, os.WNOHANG if deadline else 0)
            if pid:
                break
            if time.perf_counter() > deadline:
                process.kill()
                pid, status, usage = os.wait4(process.pid, 0)
                status = None
                break
            time.sleep(0.2)
        seconds = time.perf_counter() - started
        process.returncode = -9 if status is None else os.waitstatus_to_exitcode(status)
        stdout.seek(0)
        stderr.seek(0)
        return {"seconds": seconds, "returncode": process.returncode, "timed_out": status is None,
                "stdout": stdout.read(), "stderr": stderr.read(), "peak_rss_mb": usage.ru_maxrss / 1024}


def gpt2reg_executable() -> str:
    # The console script installed beside this interpreter: the one a user of this environment runs.
    return str(Path(sys.executable).with_name("gpt2reg"))


def stdlib_documents(limit_bytes: int) -> list[str]:
    """The standard library's .py files, in a fixed order, until `limit_bytes` of UTF-8."""
    documents, total = [], 0
    for path in sorted(Path(sysconfig.get_paths()["stdlib"]).rglob("*.py")):
        if "site-packages" in path.parts:
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        documents.append(text)
        total += len(text.encode("utf-8"))
        if total >= limit_bytes:
            break
    return documents


def sample_of(documents: list[str], limit_bytes: int) -> list[str]:
    sample, total = [], 0
    for document in documents:
        if sample and total + len(document.encode("utf-8")) > limit_bytes:
            break
        sample.append(document)
        total += len(document.encode("utf-8"))
    return sample


def ids_digest(ids: list[list[int]]) -> str:
    return hashlib.sha256(json.dumps(ids).encode()).hexdigest()[:16]


def torch_device(settings: Settings) -> str:
    return "cuda" if settings.device == "gpu" else "cpu"


def require_tensorflow_device(settings: Settings) -> str:
    """Where TensorFlow runs in this case; on --device gpu, refuse to measure a CPU by mistake."""
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if settings.device == "gpu" and not gpus:
        raise RuntimeError("--device gpu: TensorFlow sees no GPU")
    return "gpu" if gpus else "cpu"


def skipped(name: str, reason: str, **fields) -> dict:
    return {"name": name, "status": "skipped", "reason": reason, **fields}


def first_line(error: BaseException) -> str:
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0][:300] if text else ''}".rstrip(": ")


# ---------------------------------------------------------------- 1. generation


def case_generate(settings: Settings, case: str) -> dict:
    import warnings

    from backends import keras_gpt2
    from backends.loaded_model import LoadedModel
    from backends.tokenizer import encode

    generate = bench_module("generate")
    where = require_tensorflow_device(settings)
    lm = keras_gpt2.build(keras_gpt2.get_config(settings.generate_config), seed=0)
    started = time.perf_counter()
    runtime_cache = None  # where our runtimes write their graphs (their weights as they read them)
    if case in ("generate-hf", "generate-hf-int8"):
        label = HF if case == "generate-hf" else HF_INT8
        try:
            model, prepared = hf_model(lm, generate, settings, int8=case == "generate-hf-int8")
        except ImportError as error:
            return {"rows": [skipped(label, f"transformers + torch not importable ({error})")]}
        device = "cpu" if case == "generate-hf-int8" else torch_device(settings)
        where = device.replace("cuda", "gpu")
        make_call = lambda texts, ids, new: generate._hf_call(model, ids, new, device=device)
    elif case == "generate-stock":
        label, prepared = STOCK, {}
        make_call = lambda texts, ids, new: generate.stock_call(lm, texts, new)
    else:
        label, runtime, int8 = next((label, runtime, int8) for name, label, runtime, int8 in OURS if name == case)
        prepared = {}
        if int8:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # one per layer, about its build state
                lm.backbone.quantize("int8")
        settings_for_runtime = {"runtime": runtime}  # explicit: `auto` would pick onnx for float32 too
        if runtime != "keras":
            where = "cpu"  # onnxruntime and LiteRT decode on the CPU here
            # A fresh folder for the runtime's graph, so the first call includes building it.
            runtime_cache = tempfile.mkdtemp(prefix="gpt2reg-bench-runtime-")
            LoadedModel.of(lm).runtime_cache = runtime_cache
            atexit.register(shutil.rmtree, runtime_cache, True)
        make_call = lambda texts, ids, new: generate.ours_call(lm, ids, new, **settings_for_runtime)
    prepared["prepare_s"] = time.perf_counter() - started

    rows = []
    wide = case in WIDE_BATCH_CASES
    for batch_size in settings.wide_batch_sizes if wide else settings.batch_sizes:
        texts = [generate.PROMPTS[row % len(generate.PROMPTS)] for row in range(batch_size)]
        ids = [encode(t) for t in texts]
        new = settings.new_tokens
        outputs: list = []
        try:
            figures = generate.timed(keeping_output(make_call(texts, ids, new), outputs), settings.repeats)
        except Exception as error:  # noqa: BLE001 - a runtime not built yet, a converter refusing the model, ...
            rows.append(skipped(label, first_line(error), batch_size=batch_size))
            continue
        row = {"name": label, "status": "ok", "batch_size": batch_size, "new_tokens_per_row": new,
               "tokens_per_s": new * len(ids) / figures["steady_s"], "device": where, **figures, **prepared}
        if case != "generate-hf-int8":  # torch's packed int8 weights are not counted here
            row["weight_bytes"] = weight_bytes(lm, runtime_cache)
        results = outputs[-1]
        if batch_size == 1 and isinstance(results, list) and results and hasattr(results[0], "token_ids"):
            row["first_row_tokens"] = list(results[0].token_ids)
        rows.append(row)
    return {"rows": rows}


def case_roofline(settings: Settings, case: str) -> dict:
    """The machine's memory read bandwidth: the ceiling of decoding, which reads every weight once a step.

    numpy reduces a buffer far larger than the caches (1 GiB; 256 MiB with --quick), split over
    one thread and over the threads onnxruntime decodes with (`backends.runtime_sessions.cpu_threads`);
    numpy's reductions release the GIL, so the threads read at once. Three readers, the best pass
    of each: a float64 sum, an int64 bitwise or and a uint8 maximum (the lightest arithmetic per
    byte; here it read 10 to 24 % faster than the sum in two runs). The fastest is the roofline:
    onnxruntime's float32 products read `gpt2-large` at 36.5 GB/s where the sum read 31.6.
    """
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np

    from backends.runtime_sessions import cpu_threads

    size = (256 if settings.quick else 1024) << 20
    buffer = np.ones(size // 8, dtype=np.float64)  # written once: its pages are real memory
    readers = (("float64 sum", buffer, np.sum), ("int64 bitwise or", buffer.view(np.int64), np.bitwise_or.reduce),
               ("uint8 maximum", buffer.view(np.uint8), np.max))
    rows = []
    for threads in sorted({1, cpu_threads()}):
        for label, view, reduce in readers:
            parts = np.array_split(view, threads)
            best = math.inf
            with ThreadPoolExecutor(threads) as pool:
                for _ in range(max(5, settings.repeats + 2)):
                    started = time.perf_counter()
                    list(pool.map(reduce, parts))
                    best = min(best, time.perf_counter() - started)
            rows.append({"name": f"numpy {label}, {threads} thread{'s' if threads > 1 else ''}", "status": "ok",
                         "threads": threads, "buffer_mb": size / 2**20, "read_gb_per_s": size / best / 1e9})
    return {"rows": rows}


def weight_bytes(lm, runtime_cache: str | None) -> int:
    """Bytes of weights a decoding step reads.

    For an ONNX graph of our runtime: its initializers as it stores them (int8 included), less the
    tables a `Gather` looks rows up in (the token and position embeddings: a step reads one row of
    each; the output projection is a table of its own and is read whole). For a LiteRT graph: its
    file. Otherwise the model's float32 parameters less the position table.
    """
    if runtime_cache is not None:
        graphs = sorted(Path(runtime_cache).rglob("*.onnx"))
        if graphs:
            return max(bench_module("growth").graph_weight_bytes(graph) for graph in graphs)
        files = [f for f in Path(runtime_cache).rglob("*") if f.is_file()]
        if files:
            return sum(f.stat().st_size for f in files)
    # Every parameter once, less the position table (a step reads one row of it). The token table's
    # rows are looked up too, but the output projection (tied to it) reads it whole.
    positions = math.prod(int(d) for d in lm.backbone.position_embedding.weights[0].shape)
    return 4 * (int(lm.count_params()) - positions)


def case_growth(settings: Settings, case: str) -> dict:
    """bench/growth.py: tokens/s of our onnxruntime decoder against context, batch size and model size."""
    growth = bench_module("growth")
    rows = growth.measure(("context", "batch", "size"), steps=settings.growth_steps,
                          repeats=max(3, settings.repeats), sizes=settings.growth_sizes,
                          model=settings.generate_config, **({"contexts": (16, 64), "short_context": 16}
                                                             if settings.quick else {}))
    for row in rows:
        row["device"] = "cpu"
    return {"rows": rows}


def keeping_output(call, outputs: list):
    """`call`, keeping what it returns (the generated tokens) for the comparison of contenders."""

    def kept():
        outputs.append(call())

    return kept


def hf_model(lm, generate, settings: Settings, int8: bool):
    """The Hugging Face model on `lm`'s weights; for int8, dynamically quantized on the CPU."""
    import warnings

    import torch
    import transformers  # noqa: F401 - an ImportError here means "not installed"

    model = generate._hf_model(lm)
    if model is None:
        raise ImportError("transformers or torch")
    if not int8:
        return model.to(torch_device(settings)), {}
    difference = replace_conv1d_by_linear(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch announces quantize_dynamic's move to torchao
        quantized = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
    return quantized, {"linear_max_abs_logit_difference": difference}


def replace_conv1d_by_linear(model) -> float:
    """Swap every transformers `Conv1D` (y = x W + b, W stored [in, out]) for the equivalent
    `nn.Linear` (W stored [out, in]): torch's dynamic quantization only knows nn.Linear.
    Returns the largest change of a logit on a test prompt; raises if it is not negligible."""
    import torch
    from transformers.pytorch_utils import Conv1D

    probe = torch.tensor([[464, 2068, 7586, 21831, 18045, 625, 262, 16931, 3290, 13]])
    with torch.inference_mode():
        before = model(input_ids=probe).logits
    for parent in list(model.modules()):
        for child_name, child in list(parent.named_children()):
            if isinstance(child, Conv1D):
                linear = torch.nn.Linear(child.nx, child.nf)
                with torch.no_grad():
                    linear.weight.copy_(child.weight.T)
                    linear.bias.copy_(child.bias)
                setattr(parent, child_name, linear)
    with torch.inference_mode():
        after = model(input_ids=probe).logits
    difference = float((after - before).abs().max())
    if not torch.allclose(after, before, rtol=1e-5, atol=1e-4):
        raise RuntimeError(f"Conv1D -> Linear changed the logits by up to {difference}")
    return difference


# ---------------------------------------------------------------- 2. training


def case_train(settings: Settings, case: str) -> dict:
    from backends.configs import get_config, parameter_count

    train = bench_module("train")
    config = get_config(settings.train_config)
    blocks = train.blocks_for(settings.train_steps * settings.train_batch_size, settings.train_seq_len)
    tokens = settings.train_batch_size * settings.train_seq_len
    common = {"config": settings.train_config, "seq_len": settings.train_seq_len,
              "batch_size": settings.train_batch_size, "steps": settings.train_steps}
    if case == "train-torch":
        try:
            import torch  # noqa: F401
            import transformers  # noqa: F401
        except ImportError as error:
            return {"rows": [skipped("PyTorch full fine-tuning", f"not importable ({error})")]}
        seconds, info = train.torch_step_seconds(blocks, steps=settings.train_steps,
                                                 batch_size=settings.train_batch_size, config=config,
                                                 device=torch_device(settings))
        return {"rows": [{"name": "PyTorch full fine-tuning", "status": "ok", "step_s": seconds,
                          "tokens_per_s": tokens / seconds, "device": torch_device(settings).replace("cuda", "gpu"),
                          **common, **info}]}
    from plugins.finetune import XLA_FROM_PARAMETERS

    where = require_tensorflow_device(settings)
    xla = parameter_count(config) >= XLA_FROM_PARAMETERS  # what `gpt2reg finetune` chooses by default
    rank = settings.lora_rank if case == "train-lora" else None
    seconds, extra = train.keras_step_seconds(config, blocks, steps=settings.train_steps,
                                              batch_size=settings.train_batch_size, precision="fp32",
                                              lora_rank=rank, jit_compile=xla)
    name = f"ours LoRA rank {rank}" if rank else "ours full fine-tuning"
    return {"rows": [{"name": name, "status": "ok", "step_s": seconds, "tokens_per_s": tokens / seconds,
                      "xla": xla, "device": where, **common, **extra}]}


# ---------------------------------------------------------------- 3. scoring


def case_scoring(settings: Settings, case: str) -> dict:
    evaluate = bench_module("evaluate")
    where = require_tensorflow_device(settings)
    with tempfile.TemporaryDirectory(prefix="bench-run-") as scratch:
        output = Path(scratch, "evaluate.json")
        arguments = ["--config", settings.score_config, "--batch-size", str(settings.score_batch_size),
                     "--length", str(settings.score_length), "--batches", str(settings.score_batches),
                     "--repeats", str(settings.repeats), "--json", str(output)]
        saved, sys.argv = sys.argv, ["evaluate.py", *arguments]
        try:
            evaluate.main()  # prints its own table; this case's JSON is printed last
        finally:
            sys.argv = saved
        figures = json.loads(output.read_text())
    common = {"config": figures["config"], "texts": figures["texts"], "length": figures["length"],
              "batch_size": figures["batch_size"], "device": where}
    rows = [{"name": label, "status": "ok", "seconds": seconds,
             "tokens_per_s": figures["tokens_per_second"][label], **common}
            for label, seconds in figures["seconds"].items()]
    return {"rows": rows, "scoring_over_forward": figures["ratio"]}


def case_scoring_runtime(settings: Settings, case: str) -> dict:
    """Perplexity scoring through our onnxruntime decoder (`backends.perplexity.RuntimeScorer`, what
    `gpt2reg evaluate --data` runs without TensorFlow) against a bare forward pass of the same graph
    over the same batches: the decoder's prefill and the logits of every token, nothing else."""
    import numpy as np

    from backends.perplexity import RuntimeScorer
    from backends.runtime_sessions import OnnxSession, cpu_threads

    growth = bench_module("growth")
    with tempfile.TemporaryDirectory(prefix="bench-scoring-") as scratch:
        weights, shape = growth.random_weights(settings.score_config, "float32")
        embedding = weights.tensors["transformer.wte.weight"]
        decoder = growth.decoder_for(settings.score_config, "float32", scratch)
        length = min(settings.score_length, shape["max_sequence_length"])
        rng = np.random.default_rng(0)
        texts = [rng.integers(0, 50256, size=length).tolist()
                 for _ in range(settings.score_batch_size * settings.score_batches)]
        scorer = RuntimeScorer(decoder, embedding)
        logits = OnnxSession(growth.product_graph(), threads=cpu_threads())
        embedding_t = np.ascontiguousarray(embedding.T)

        def forward():
            for begin in range(0, len(texts), settings.score_batch_size):
                hidden = decoder.start(texts[begin : begin + settings.score_batch_size], max_new_tokens=0).prompt_hidden
                for row in hidden:  # the logits of every position but the last, as scoring needs them
                    logits.run({"states": np.ascontiguousarray(row[:-1]), "embedding": embedding_t})

        def score():
            scorer.score(texts, batch_size=settings.score_batch_size)

        seconds = {}
        for label, call in (("runtime: bare forward pass (prefill + logits of every token)", forward),
                            ("runtime: RuntimeScorer.score (gpt2reg evaluate without TensorFlow)", score)):
            # The first call (which makes the scorer's head graph) is left out, as for generation.
            seconds[label] = bench_module("generate").timed(call, settings.repeats)["steady_s"]
    tokens = len(texts) * length
    rows = [{"name": label, "status": "ok", "seconds": value, "tokens_per_s": tokens / value,
             "config": settings.score_config, "length": length, "batch_size": settings.score_batch_size,
             "device": "cpu"} for label, value in seconds.items()]
    forward_s, score_s = seconds.values()
    return {"rows": rows, "scoring_over_forward": forward_s / score_s}


# ---------------------------------------------------------------- 4. tokenization


def case_tokenize(settings: Settings, case: str) -> dict:
    documents = stdlib_documents(settings.tokenize_bytes)
    sample = sample_of(documents, settings.sample_bytes)
    megabytes = sum(len(d.encode("utf-8")) for d in documents) / 1e6
    started = time.perf_counter()
    if case == "tokenize-keras":
        from backends.tokenizer import keras_tokenizer

        tokenizer = keras_tokenizer()
        name = "KerasHub GPT2Tokenizer"

        def encode_all(texts):
            return [[int(i) for i in row] for row in tokenizer(texts)]
    else:
        from backends.tokenizer import encode_batch, fast_encoding

        encoding = fast_encoding()
        if case == "tokenize-ours":
            name = "ours (encode_batch)"
            encode_all = encode_batch
        else:
            name = "tiktoken (encode_ordinary per document)"

            def encode_all(texts):
                return [encoding.encode_ordinary(text) for text in texts]
    setup = time.perf_counter() - started
    figures = bench_module("generate").timed(lambda: encode_all(documents), settings.repeats)
    row = {"name": name, "status": "ok", "megabytes": megabytes, "documents": len(documents),
           "mb_per_s": megabytes / figures["steady_s"], "setup_s": setup, **figures}
    sample_ids = encode_all(sample)
    extra = {"sample_digest": ids_digest(sample_ids), "sample_documents": len(sample),
             "sample_tokens": sum(len(i) for i in sample_ids)}
    if case == "tokenize-keras":
        extra["first_difference"] = first_difference(sample, sample_ids)
    return {"rows": [{**row, **extra}]}


def first_difference(sample: list[str], ids: list[list[int]]) -> dict | None:
    """Where these ids first part from tiktoken's, with the pieces on each side (None: identical)."""
    from backends.tokenizer import encode_batch, pieces

    for index, (expected, got) in enumerate(zip(encode_batch(sample), ids)):
        if expected != got:
            at = next((k for k in range(min(len(expected), len(got))) if expected[k] != got[k]),
                      min(len(expected), len(got)))
            return {"document": index, "token": at, "tiktoken": pieces(expected[at:at + 3]),
                    "this": pieces(got[at:at + 3])}
    return None


# ---------------------------------------------------------------- 5, 6. start-up


def case_cli_help(settings: Settings, case: str) -> dict:
    runs = [measure_process([gpt2reg_executable(), "--help"]) for _ in range(settings.help_runs)]
    failed = next((r for r in runs if r["returncode"] != 0), None)
    if failed:
        raise RuntimeError(f"gpt2reg --help exited {failed['returncode']}: {failed['stderr'][-500:]}")
    seconds = [r["seconds"] for r in runs]
    return {"rows": [{"name": "gpt2reg --help", "status": "ok", "seconds": statistics.median(seconds),
                      "runs_s": seconds, "peak_rss_mb": max(r["peak_rss_mb"] for r in runs)}]}


# Timed inside the fresh process, from before `import registry` to the loaded model; the
# process's own wall time (interpreter start-up included) is measured from outside.
LOAD_SNIPPET = """
import json, sys, time
started = time.perf_counter()
import registry
registry.Registry(sys.argv[1]).get("tinyv").load()
print(json.dumps({"seconds": time.perf_counter() - started}))
"""


def case_load_tiny(settings: Settings, case: str) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench-run-") as scratch:
        home = str(Path(scratch, "home"))
        made = measure_process([gpt2reg_executable(), "create", "tinyv", "--config", "tiny", "--home", home])
        if made["returncode"] != 0:
            raise RuntimeError(f"gpt2reg create failed: {made['stderr'][-500:]}")
        runs = []
        for _ in range(settings.load_runs):
            run = measure_process([sys.executable, "-c", LOAD_SNIPPET, home])
            if run["returncode"] != 0:
                raise RuntimeError(f"loading failed: {run['stderr'][-500:]}")
            run["inside_s"] = json.loads(run["stdout"].strip().splitlines()[-1])["seconds"]
            runs.append(run)
    inside = [r["inside_s"] for r in runs]
    return {"rows": [{"name": "import registry -> tiny variant loaded", "status": "ok",
                      "seconds": statistics.median(inside), "runs_s": inside,
                      "process_s": statistics.median(r["seconds"] for r in runs),
                      "peak_rss_mb": max(r["peak_rss_mb"] for r in runs)}]}


# ---------------------------------------------------------------- 8. light inference

LIGHT_PROMPT = "The Python tutorial"


def _gpt2reg(*args: str, timeout: float = 1800) -> dict:
    run = measure_process([gpt2reg_executable(), *args], timeout=timeout)
    if run["returncode"] != 0:
        raise RuntimeError(f"gpt2reg {' '.join(args[:2])} exited {run['returncode']}: {run['stderr'][-500:]}")
    return run


def _cold_generate_rows(settings: Settings, home: str, ref: str, label: str, new_tokens: int) -> list[dict]:
    """The first call (writes the graph), later cold calls, and the Keras path, each in a fresh process."""
    command = ["generate", ref, LIGHT_PROMPT, "--max-new-tokens", str(new_tokens), "--json", "--home", home]
    first = _gpt2reg(*command)
    later = [_gpt2reg(*command) for _ in range(settings.light_runs)]
    keras = [_gpt2reg(*command, "--runtime", "keras") for _ in range(max(1, settings.light_runs // 2))]
    tokens = json.loads(first["stdout"])["outputs"][0]["token_ids"]
    same = json.loads(keras[0]["stdout"])["outputs"][0]["token_ids"] == tokens
    base = {"status": "ok", "new_tokens": new_tokens}
    return [
        {**base, "name": f"{label}: first call (writes the graph)", "seconds": first["seconds"],
         "peak_rss_mb": first["peak_rss_mb"]},
        {**base, "name": f"{label}: cold call, graph kept", "seconds": statistics.median(r["seconds"] for r in later),
         "runs_s": [r["seconds"] for r in later], "peak_rss_mb": max(r["peak_rss_mb"] for r in later)},
        {**base, "name": f"{label}: cold call --runtime keras (through TensorFlow)",
         "seconds": statistics.median(r["seconds"] for r in keras), "runs_s": [r["seconds"] for r in keras],
         "peak_rss_mb": max(r["peak_rss_mb"] for r in keras), "same_tokens": same},
    ]


def _light_home(config: str, scratch: str, *, int8: bool = False) -> str:
    home = str(Path(scratch, "home"))
    _gpt2reg("create", "v", "--config", config, "--home", home)
    if int8:
        _gpt2reg("quantize", "v", "--mode", "int8", "--name", "v-int8", "--home", home)
    return home


def case_light_tiny(settings: Settings, case: str) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench-light-") as scratch:
        home = _light_home("tiny", scratch)
        return {"rows": _cold_generate_rows(settings, home, "v", "tiny, 20 tokens", 20)}


def case_light_gpt2(settings: Settings, case: str) -> dict:
    config = settings.light_big_config
    with tempfile.TemporaryDirectory(prefix="bench-light-") as scratch:
        home = _light_home(config, scratch)
        return {"rows": _cold_generate_rows(settings, home, "v", f"{config}, 8 tokens", 8)}


# In one process: seconds from each `Registry.stream` call to its first event, the first call apart.
REPEATED_SNIPPET = """
import json, sys, time
import registry
reg = registry.Registry(sys.argv[1])
found = {}
for ref in sys.argv[2:]:
    seconds = []
    for _ in range(6):
        started = time.perf_counter()
        stream = reg.stream(ref, "The Python tutorial", max_new_tokens=8)
        next(iter(stream))
        seconds.append(time.perf_counter() - started)
        for _ in stream:
            pass
    found[ref] = seconds
heavy = sorted(m for m in ("tensorflow", "keras", "keras_hub") if m in sys.modules)
print(json.dumps({"seconds": found, "heavy": heavy}))
"""


def case_light_repeated(settings: Settings, case: str) -> dict:
    config = settings.light_big_config
    with tempfile.TemporaryDirectory(prefix="bench-light-") as scratch:
        home = _light_home(config, scratch, int8=True)
        run = measure_process([sys.executable, "-c", REPEATED_SNIPPET, home, "v", "v-int8"])
        if run["returncode"] != 0:
            raise RuntimeError(f"repeated calls failed: {run['stderr'][-500:]}")
        found = json.loads(run["stdout"].strip().splitlines()[-1])
    rows = []
    for ref, label in (("v", "float32"), ("v-int8", "int8")):
        seconds = found["seconds"][ref]
        rows.append({"name": f"{config} {label}: call to first token, repeated in one process", "status": "ok",
                     "seconds": statistics.median(seconds[1:]), "first_call_s": seconds[0], "runs_s": seconds,
                     "peak_rss_mb": run["peak_rss_mb"], "heavy_modules": found["heavy"]})
    return {"rows": rows}


# Hugging Face's cold generate: a fresh process that imports transformers and torch, loads the
# exported checkpoint and generates greedily, as a user of that stack would.
HF_SNIPPET = """
import json, sys, time
started = time.perf_counter()
import torch
from transformers import GPT2LMHeadModel, GPT2TokenizerFast
folder, new_tokens = sys.argv[1], int(sys.argv[2])
tokenizer = GPT2TokenizerFast.from_pretrained(folder)
model = GPT2LMHeadModel.from_pretrained(folder).eval()
ids = tokenizer("The Python tutorial", return_tensors="pt").input_ids
with torch.no_grad():
    out = model.generate(ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                         pad_token_id=tokenizer.eos_token_id)
print(json.dumps({"tokens": out[0, ids.shape[1]:].tolist(), "seconds": time.perf_counter() - started}))
"""


def case_light_hf(settings: Settings, case: str) -> dict:
    # Hugging Face's stack may live in an environment of its own (BENCH_HF_PYTHON names its interpreter).
    python = os.environ.get("BENCH_HF_PYTHON", sys.executable)
    probe = measure_process([python, "-c", "import torch, transformers"])
    if probe["returncode"] != 0:
        return {"rows": [skipped("HF transformers + torch cold generate", "transformers or torch not installed "
                                 "(the `bench` extra, or BENCH_HF_PYTHON)")]}
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-light-") as scratch:
        for config, new_tokens in (("tiny", 20), (settings.light_big_config, 8)):
            home = str(Path(scratch, config, "home"))
            _gpt2reg("create", "v", "--config", config, "--home", home)
            folder = str(Path(scratch, config, "hf"))
            _gpt2reg("export", "v", "--format", "hf", "--out", folder, "--home", home)
            runs = [measure_process([python, "-c", HF_SNIPPET, folder, str(new_tokens)])
                    for _ in range(settings.light_runs)]
            failed = next((r for r in runs if r["returncode"] != 0), None)
            if failed:
                raise RuntimeError(f"transformers failed: {failed['stderr'][-500:]}")
            ours = json.loads(_gpt2reg("generate", "v", LIGHT_PROMPT, "--max-new-tokens", str(new_tokens),
                                       "--ignore-end-of-text", "--json", "--home", home)["stdout"])
            theirs = json.loads(runs[0]["stdout"].strip().splitlines()[-1])["tokens"]
            rows.append({"name": f"{config}, {new_tokens} tokens: HF transformers + torch cold call", "status": "ok",
                         "seconds": statistics.median(r["seconds"] for r in runs),
                         "runs_s": [r["seconds"] for r in runs], "peak_rss_mb": max(r["peak_rss_mb"] for r in runs),
                         "same_tokens": theirs == ours["outputs"][0]["token_ids"]})
    return {"rows": rows}


# ---------------------------------------------------------------- 9. serving


def _percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(share * len(ordered)) - 1))]


def _group_peak_rss_mb(group: int) -> float:
    """The largest peak RSS among the live processes of a process group (the server: mlflow, uvicorn)."""
    peak = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[2]) != group:
                continue
            status = (stat.parent / "status").read_text()
        except (OSError, IndexError, ValueError):
            continue
        for line in status.splitlines():
            if line.startswith("VmHWM:"):
                peak = max(peak, int(line.split()[1]))
    return peak / 1024


def case_light_serve(settings: Settings, case: str) -> dict:
    """`mlflow models serve` of a tiny variant: its start, then requests from 1 and 4 clients at once.

    The pyfunc answers whole (no streaming), so the time to the first token is that of a request for
    one new token; steady tokens/s is the new tokens of a 64-token request over its time.
    """
    import socket
    import threading
    import urllib.request

    requests_each = 6 if settings.quick else 25
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as scratch:
        home = _light_home("tiny", scratch)
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{Path(home, 'mlflow.db')}",
               # the scoring server starts `uvicorn` from PATH: this environment's, as after `activate`
               "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])}
        mlflow = str(Path(sys.executable).with_name("mlflow"))
        started = time.perf_counter()
        server = subprocess.Popen([mlflow, "models", "serve", "-m", "models:/v/1", "--env-manager", "local",
                                   "-h", "127.0.0.1", "-p", str(port)], env=env, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL, start_new_session=True)
        url = f"http://127.0.0.1:{port}"

        def post(new_tokens: int, seed: int) -> float:
            body = json.dumps({"inputs": [LIGHT_PROMPT], "params": {"max_new_tokens": new_tokens, "seed": seed,
                                                                    "sampler": "top_k"}}).encode()
            request = urllib.request.Request(f"{url}/invocations", body, {"Content-Type": "application/json"})
            began = time.perf_counter()
            with urllib.request.urlopen(request, timeout=300) as answer:
                answer.read()
            return time.perf_counter() - began

        try:
            while True:
                try:
                    with urllib.request.urlopen(f"{url}/ping", timeout=2):
                        break
                except OSError:
                    if server.poll() is not None or time.perf_counter() - started > 300:
                        raise RuntimeError("mlflow models serve did not start")
                    time.sleep(0.1)
            start_s = time.perf_counter() - started
            first_request_s = post(1, 0)  # the model loads (and writes its graph) on the first request
            rows = [{"name": "mlflow models serve: start, until /ping answers", "status": "ok", "seconds": start_s},
                    {"name": "mlflow models serve: first request (1 token)", "status": "ok",
                     "seconds": first_request_s}]
            for clients in (1, 4):
                latencies: dict[int, list[float]] = {1: [], 64: []}

                def client(index: int) -> None:
                    for number in range(requests_each):
                        for tokens in (1, 64):
                            latencies[tokens].append(post(tokens, index * 1000 + number))

                threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
                began = time.perf_counter()
                for thread in threads:
                    thread.start()
                for thread in threads:
                    thread.join()
                wall = time.perf_counter() - began
                per_request = [64 / t for t in latencies[64]]
                rows.append({"name": f"{clients} client(s), {requests_each} requests each", "status": "ok",
                             "clients": clients, "ttft_p50_s": _percentile(latencies[1], 0.5),
                             "ttft_p99_s": _percentile(latencies[1], 0.99),
                             "tokens_per_s_p50": _percentile(per_request, 0.5),
                             "tokens_per_s_p1": _percentile(per_request, 0.01),
                             "total_tokens_per_s": (len(latencies[1]) + 64 * len(latencies[64])) / wall})
            for row in rows:
                row["peak_rss_mb"] = _group_peak_rss_mb(server.pid)
        finally:
            if server.poll() is None:
                os.killpg(server.pid, signal.SIGTERM)
                server.wait(timeout=60)
    return {"rows": rows}


# ---------------------------------------------------------------- 7. logging overhead


def case_logging(settings: Settings, case: str) -> dict:
    """Step times of the same fine-tune with the product's recording path and without it.

    `finetune` hands every step to the run's progress sink (the progress bar `gpt2reg`
    shows); the step curves go to MLflow in one batch when the recorder logs the run.
    "on" is `Registry.run("finetune", ...)` with the CLI's progress reporter; "off" is
    `backends.training.train` on the same blocks, plan, weights and strategy, with a
    callback that only notes the time. After an untimed warm-up run, rounds (`--repeats`)
    alternate which path goes first.
    """
    import numpy as np

    from registry import Registry, tracking
    from registry.progress import ProgressReporter

    where = require_tensorflow_device(settings)
    uploads: list[float] = []
    original_log_metrics = tracking.Tracker.log_metrics

    def timed_log_metrics(self, *args, **kwargs):  # the MLflow upload of the curves, timed in place
        started = time.perf_counter()
        try:
            return original_log_metrics(self, *args, **kwargs)
        finally:
            uploads.append(time.perf_counter() - started)

    tracking.Tracker.log_metrics = timed_log_metrics
    durations: dict[str, list[float]] = {"off": [], "on": []}
    after_training: list[float] = []
    upload_seconds: list[float] = []
    steps = settings.logging_steps
    with tempfile.TemporaryDirectory(prefix="bench-run-") as scratch:
        data = Path(scratch, "data.txt")
        data.write_text("\n\n".join(stdlib_documents(settings.logging_data_bytes)), encoding="utf-8")
        reg = Registry(Path(scratch, "home"))
        base = reg.create("base", config=settings.logging_config, seed=0)
        # Untimed: the first training in a process runs its steps ~10% slower for a while (thread
        # pools, tf.data's autotuning), which would count against whichever path went first.
        train_without_recording(reg, base, data, WARM_UP_STEPS, on_step=None)
        for round_ in range(max(settings.repeats, 1)):
            for mode in (("off", "on") if round_ % 2 == 0 else ("on", "off")):
                if mode == "on":
                    uploads.clear()
                    clock = StepClock(forward=ProgressReporter())  # the sink `gpt2reg finetune` gives the registry
                    reg.progress = clock
                    reg.run("finetune", base, data=[str(data)], steps=steps, checkpoint_every=0)
                    after_training.append(time.perf_counter() - clock.stamps[-1])
                    upload_seconds.append(sum(uploads))
                else:
                    clock = StepClock()
                    train_without_recording(reg, base, data, steps, on_step=clock)
                durations[mode].extend(np.diff(clock.stamps).tolist())  # the first step (tracing) is left out
    off, on = statistics.median(durations["off"]), statistics.median(durations["on"])
    upload = statistics.median(upload_seconds)
    common = {"config": settings.logging_config, "steps": steps, "rounds": max(settings.repeats, 1), "device": where}
    return {"rows": [
        {"name": "backends.training.train (no recording)", "status": "ok", "step_s": off, **common},
        {"name": "Registry.run('finetune') (progress + MLflow)", "status": "ok", "step_s": on,
         "overhead_pct": 100 * (on - off) / off, "mlflow_log_metrics_s": upload,
         "overhead_with_upload_pct": 100 * (on + upload / steps - off) / off,
         "after_training_s": statistics.median(after_training), **common},
    ]}


WARM_UP_STEPS = 5


class StepClock:
    """Notes the time of each training step: as `training.train`'s on_step callback (positional
    figures) or as the registry's progress sink (keywords, `step` set once per step)."""

    def __init__(self, forward=None):
        self.forward = forward
        self.stamps: list[float] = []

    def __call__(self, *figures, **fields):
        if self.forward is not None:
            self.forward(*figures, **fields)
        if figures or fields.get("step") is not None:
            self.stamps.append(time.perf_counter())


def train_without_recording(reg, base, data: Path, steps: int, *, on_step) -> None:
    """The training `finetune` does, with its own defaults, minus the registry around it."""
    from backends import training
    from backends.configs import END_OF_TEXT_ID
    from plugins.finetune import XLA_FROM_PARAMETERS, Finetune
    from registry.capability import RunContext
    from registry.plugins import load_plugins
    from registry.data import pack_blocks, read_texts, tokenize_documents

    defaults = Finetune.Options()
    seq_len = min(base.config.get("max_sequence_length", 1024), 128)  # finetune's default --seq-len
    blocks = pack_blocks(tokenize_documents(read_texts([str(data)])), seq_len + 1, END_OF_TEXT_ID)
    held_out = max(1, round(len(blocks) * defaults.val_split))
    blocks = blocks[:-held_out]
    plan = training.TrainingPlan(
        steps=steps, batch_size=defaults.batch_size, grad_accum=defaults.grad_accum, learning_rate=defaults.lr,
        warmup_steps=steps // 10, seed=defaults.seed, precision=defaults.precision, checkpoint_every=0,
        eval_every=defaults.eval_every, patience=defaults.patience,
        jit_compile=base.parameters >= XLA_FROM_PARAMETERS,
    )
    with tempfile.TemporaryDirectory(prefix="bench-run-") as workdir:
        context = RunContext(variant=base, workdir=Path(workdir), hook=load_plugins().hook, variants=reg,
                             home=reg.home)
        with context.strategy().scope():
            lm = context.load_model(dtype=training.dtype_policy(defaults.precision))
            training.train(lm, blocks, plan, on_step=on_step)


CASE_FUNCTIONS = {
    **{case: case_generate for case, *_ in OURS},
    "roofline": case_roofline,
    "generate-stock": case_generate, "generate-hf": case_generate, "generate-hf-int8": case_generate,
    "train-full": case_train, "train-lora": case_train, "train-torch": case_train,
    "scoring": case_scoring, "scoring-runtime": case_scoring_runtime,
    "tokenize-ours": case_tokenize, "tokenize-tiktoken": case_tokenize, "tokenize-keras": case_tokenize,
    "cli-help": case_cli_help, "load-tiny": case_load_tiny, "logging": case_logging,
    "light-tiny": case_light_tiny, "light-gpt2": case_light_gpt2, "light-repeated": case_light_repeated,
    "light-hf": case_light_hf, "light-serve": case_light_serve,
    "growth": case_growth,
}


def run_case_here(case: str, settings: Settings) -> None:
    """Child side: measure one case and print its JSON document as the last line of stdout."""
    result = CASE_FUNCTIONS[case](settings, case)
    own = own_peak_rss_mb()
    for row in result["rows"]:
        row.setdefault("peak_rss_mb", own)  # cases that time other processes set their peak themselves
    print(json.dumps({"case": case, **result}, default=float), flush=True)


# ---------------------------------------------------------------- the parent


def select_cases(args) -> list[str]:
    names = [case for case, _ in CASES]

    def expand(text: str) -> set[str]:
        chosen = set()
        for word in filter(None, (w.strip() for w in text.split(","))):
            # A case's own name picks it alone; a group name (`generate`) picks its cases.
            matched = {word} if word in names else {n for n in names if n.startswith(word + "-")}
            if not matched:
                raise SystemExit(f"unknown case {word!r}; cases: {', '.join(names)}")
            chosen |= matched
        return chosen

    chosen = expand(args.only) if args.only else set(names)
    chosen -= expand(args.skip) if args.skip else set()
    if args.no_hf:
        chosen -= NEEDS_HF
    return [n for n in names if n in chosen]


def run_child(case: str, args) -> dict:
    command = [sys.executable, str(Path(__file__).resolve()), "--case", case, "--repeats", str(args.repeats),
               "--device", args.device, *(["--quick"] if args.quick else [])]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONUNBUFFERED": "1"}
    if args.device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""  # TensorFlow and torch then see no GPU
    run = measure_process(command, env=env, timeout=args.case_timeout)
    if run["returncode"] != 0:
        reason = "timed out" if run["timed_out"] else f"exit {run['returncode']}: " + \
            (run["stderr"].strip().splitlines() or ["(no output)"])[-1][:300]
        return {"case": case, "rows": [{"name": case, "status": "failed", "reason": reason}],
                "stderr_tail": run["stderr"][-3000:], "seconds": run["seconds"]}
    lines = run["stdout"].strip().splitlines()
    document = json.loads(lines[-1])
    document["seconds"] = run["seconds"]
    return document


def machine_info(args) -> dict:
    def version(package: str) -> str | None:
        try:
            return importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            return None

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            cpu = next((line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")), cpu)
    except OSError:
        pass
    info = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "cpu": cpu, "cores": os.cpu_count(), "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": {p: version(p) for p in ("tensorflow", "keras", "keras-hub", "onnxruntime", "ai-edge-litert",
                                             "torch", "transformers", "tiktoken", "mlflow", "numpy")},
        "device": args.device,
        "load_average_before": os.getloadavg(),
    }
    # Other work on the cores slows every contender, and torch's threads (which wait for
    # each other at every operation) far more than the rest: the report says so.
    info["busy"] = info["load_average_before"][0] > 0.5 * (os.cpu_count() or 1)
    if args.device == "gpu" and shutil.which("nvidia-smi"):
        query = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader"],
                               capture_output=True, text=True, check=False)
        info["gpu"] = query.stdout.strip()
    return info


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3, help="timed calls after the first (their median)")
    parser.add_argument("--quick", action="store_true", help="tiny config, 16 new tokens, 1 repeat: a smoke test")
    parser.add_argument("--only", default=None, help="cases or groups to run, comma-separated")
    parser.add_argument("--skip", default=None, help="cases or groups to leave out, comma-separated")
    parser.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    parser.add_argument("--no-hf", action="store_true", help="leave out transformers + torch even when installed")
    parser.add_argument("--out", default=str(BENCH / "results"), help="folder for run-<timestamp>.json and .md")
    parser.add_argument("--case-timeout", type=float, default=3600, help="seconds before a case is stopped")
    parser.add_argument("--list", action="store_true", help="print the case names and exit")
    parser.add_argument("--case", default=None, help=argparse.SUPPRESS)  # a child process: one case
    args = parser.parse_args()
    if args.quick:
        args.repeats = 1

    if args.case:
        run_case_here(args.case, Settings.from_args(args))
        return
    if args.list:
        print("\n".join(f"{case:<22} {section}" for case, section in CASES))
        return

    settings = Settings.from_args(args)
    cases = select_cases(args)
    started = datetime.datetime.now()
    machine = machine_info(args)  # before the cases: its load average says whether the cores were free
    results = []
    for number, case in enumerate(cases, 1):
        print(f"[{number}/{len(cases)}] {case} ...", file=sys.stderr, flush=True)
        result = run_child(case, args)
        for row in result["rows"]:
            row.update(case=case, section=dict(CASES)[case])
        print(f"    {', '.join(sorted({r['status'] for r in result['rows']}))} in {result['seconds']:.0f} s",
              file=sys.stderr, flush=True)
        results.append(result)
    document = {"machine": machine, "settings": asdict(settings), "cases": results}
    document["rows"] = [row for result in results for row in result["rows"]]
    add_comparisons(document)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stamp = started.strftime("%Y%m%d-%H%M%S")
    written = [out / f"run-{stamp}.json", out / f"run-{stamp}.md"]
    growth_rows = [r for r in document["rows"] if r["section"] == "cost growth" and r["status"] == "ok"]
    if growth_rows:
        written.append(bench_module("growth").draw(growth_rows, out / f"run-{stamp}-growth.png"))
        document["growth_png"] = written[-1].name
    markdown = render(document)
    written[0].write_text(json.dumps(document, indent=2, default=float), encoding="utf-8")
    written[1].write_text(markdown, encoding="utf-8")
    print(markdown)
    print(f"written: {', '.join(str(path) for path in written)}", file=sys.stderr)
    if os.environ.get("MLFLOW_RUN_ID") or os.environ.get("MLFLOW_TRACKING_URI"):
        log_to_mlflow(document, written, started)


def log_to_mlflow(document: dict, files: list[Path], started: datetime.datetime) -> None:
    """Run through MLflow (`MLFLOW_TRACKING_URI` set, or inside an MLflow run): the report, its JSON
    and plots become the run's artifacts (under `bench/`, as `gpt2reg compare` logs its chart), each
    goal's figure a metric."""
    import re

    import mlflow

    with mlflow.start_run(run_id=os.environ.get("MLFLOW_RUN_ID"),
                          run_name=None if os.environ.get("MLFLOW_RUN_ID") else f"bench {started:%Y-%m-%d %H:%M}"):
        for path in files:
            mlflow.log_artifact(str(path), "bench")
        metrics = {re.sub(r"[^0-9A-Za-z_\-. /]", "", goal["goal"])[:250]: float(goal["value"])
                   for goal in document["goals"] if goal["value"] is not None}
        mlflow.log_metrics(metrics)
        print(f"logged to MLflow run {mlflow.active_run().info.run_id}", file=sys.stderr)


# ---------------------------------------------------------------- comparisons and the report


def add_comparisons(document: dict) -> None:
    """Ratios between rows of different processes, and the goals."""
    rows = [r for r in document["rows"] if r["status"] == "ok"]

    def find(case: str, batch_size: int | None = None) -> dict | None:
        return next((r for r in rows if r["case"] == case and r.get("batch_size") == batch_size), None)

    # The roofline: a step of decoding reads every weight once for the whole batch, so at the
    # bandwidth of the runtime's threads a batch of B can make at most B * bandwidth / weight bytes tokens/s.
    bandwidth = max((r["read_gb_per_s"] for r in rows if r["case"] == "roofline"), default=None)
    document["read_gb_per_s"] = bandwidth
    for row in (r for r in rows if r["section"] == "generation"):
        if bandwidth and row.get("weight_bytes"):
            row["roofline_tokens_per_s"] = row["batch_size"] * bandwidth * 1e9 / row["weight_bytes"]
            row["of_roofline"] = row["tokens_per_s"] / row["roofline_tokens_per_s"]
        stock = find("generate-stock", row["batch_size"])
        if stock:
            row["vs_stock"] = row["tokens_per_s"] / stock["tokens_per_s"]
        # Ours against torch on the same weights: float32 against transformers, int8 against its dynamic int8.
        peer = find(TORCH_PEER.get(row["case"], ""), row["batch_size"])
        if peer:
            row["vs_torch"] = row["tokens_per_s"] / peer["tokens_per_s"]
        keras = find("generate-keras", 1)
        if "first_row_tokens" in row and keras and "first_row_tokens" in keras:
            a, b = row["first_row_tokens"], keras["first_row_tokens"]
            row["same_greedy_prefix"] = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    torch_row = next((r for r in rows if r["case"] == "train-torch"), None)
    for row in rows:
        if row["section"] == "training" and torch_row and row is not torch_row:
            row["vs_pytorch"] = row["tokens_per_s"] / torch_row["tokens_per_s"]
    tokenizers = [r for r in rows if r["section"] == "tokenization"]
    tiktoken_row = next((r for r in tokenizers if r["case"] == "tokenize-tiktoken"), None)
    for row in tokenizers:
        if tiktoken_row:
            row["vs_tiktoken"] = row["mb_per_s"] / tiktoken_row["mb_per_s"]
    digests = {r["sample_digest"] for r in tokenizers}
    document["tokenizers_agree"] = (len(digests) == 1) if len(tokenizers) > 1 else None

    int8, keras = find("generate-onnx-int8", 1), find("generate-keras", 1)
    full = next((r for r in rows if r["case"] == "train-full"), None)
    logging_on = next((r for r in rows if r["case"] == "logging" and "overhead_pct" in r), None)
    def light(prefix: str, what: str) -> dict | None:
        return next((r for r in rows if r["section"] == "light inference" and r["name"].startswith(prefix)
                     and what in r["name"]), None)

    big = document["settings"].get("light_big_config", "gpt2")
    tiny_cold, big_cold = light("tiny,", "graph kept"), light(f"{big},", "graph kept")
    big_first, repeated = light(f"{big},", "first call"), light(f"{big} float32", "repeated")
    goals_light = [
        ("cold generate, tiny, 20 tokens: wall", tiny_cold and tiny_cold["seconds"], "<=", 1.5, " s"),
        ("cold generate, tiny, 20 tokens: peak RSS", tiny_cold and tiny_cold["peak_rss_mb"], "<=", 300, " MB"),
        (f"cold generate, {big}, 8 tokens, graph kept: wall", big_cold and big_cold["seconds"], "<=", 3.0, " s"),
        (f"cold generate, {big}, 8 tokens, graph kept: peak RSS", big_cold and big_cold["peak_rss_mb"], "<=", 1200,
         " MB"),
        (f"cold generate, {big}: first call (writes the graph)", big_first and big_first["seconds"], "<=", 15.0, " s"),
        (f"repeated in-process call, {big} float32: first token", repeated and repeated["seconds"], "<=", 0.3, " s"),
    ]
    onnx32 = find("generate-onnx", 1)
    growth_rows = [r for r in rows if r["section"] == "cost growth"]
    bench_module("growth").add_shares(growth_rows, bandwidth)

    def against_torch(case: str, batch_size: int) -> float | None:
        row = find(case, batch_size)
        return row.get("vs_torch") if row else None

    def longest_context(precision: str) -> tuple[str, float | None]:
        points = [r for r in growth_rows if r.get("axis") == "context" and r.get("precision") == precision]
        longest = max(points, key=lambda r: r["context"], default=None)
        shortest = min(points, key=lambda r: r["context"], default=None)
        span = f"{longest['context']:,} tokens of context / at {shortest['context']}" if points else \
            "1,000 tokens of context / at 64"
        return span, longest and longest.get("of_shortest_context")

    runtime_scoring = next((c for c in document["cases"] if c["case"] == "scoring-runtime"
                            and "scoring_over_forward" in c), None)
    goals_peers = [
        *[(f"ours onnx int8 / torch dynamic int8, batch {b}", against_torch("generate-onnx-int8", b), ">=", 1.2, "x")
          for b in (8, 32)],
        *[(f"ours onnx float32 / transformers + torch float32, batch {b}", against_torch("generate-onnx", b),
           ">=", 1.2, "x") for b in (1, 8, 32)],
    ]
    goals_growth = [
        (f"ours onnx {precision}: rate at {span}", share, ">=", 0.8, "")
        for precision in ("float32", "int8") for span, share in [longest_context(precision)]
    ]
    goals = [
        ("ours onnx int8, batch 1: share of its roofline", int8.get("of_roofline") if int8 else None, ">=", 0.7, ""),
        ("ours onnx float32, batch 1: share of its roofline", onnx32.get("of_roofline") if onnx32 else None,
         ">=", 0.85, ""),
        ("ours onnx int8 / stock KerasHub float32, batch 1", int8.get("vs_stock") if int8 else None, ">=", 3.0, "x"),
        ("ours onnx int8 tokens/s, batch 1", int8["tokens_per_s"] if int8 else None, ">=", 80.0, " tok/s"),
        *goals_peers,
        *goals_growth,
        ("perplexity scoring through the runtime / bare forward pass", runtime_scoring
         and runtime_scoring["scoring_over_forward"], ">=", 0.9, ""),
        ("ours keras float32 / stock KerasHub float32, batch 1", keras.get("vs_stock") if keras else None,
         ">=", 1.5, "x"),
        ("fine-tuning tokens/s, ours / plain PyTorch", full.get("vs_pytorch") if full else None, ">=", 1.0, "x"),
        ("MLflow logging overhead on the step time", logging_on["overhead_pct"] if logging_on else None,
         "<=", 2.0, " %"),
        *goals_light,
    ]
    document["goals"] = [
        {"goal": goal, "target": f"{sign} {target:g}{unit}", "value": value, "unit": unit,
         "met": None if value is None else (value >= target if sign == ">=" else value <= target)}
        for goal, value, sign, target, unit in goals
    ]


def fmt(value, spec: str, suffix: str = "") -> str:
    """A table cell: blank where the figure is missing (a skipped or failed contender)."""
    return "" if value is None else format(value, spec) + suffix


def render(document: dict) -> str:
    machine, settings, rows = document["machine"], document["settings"], document["rows"]
    versions = ", ".join(f"{k} {v}" for k, v in machine["versions"].items() if v)
    lines = [f"# Benchmark run, {machine['date']}", "",
             f"{machine['cpu']}, {machine['cores']} cores" + (f", GPU {machine['gpu']}" if machine.get("gpu") else "")
             + f"; Python {machine['python']}; {versions}; device {machine['device']}.", ""]
    if machine.get("busy"):
        lines += [(f"**The machine was busy** (load average {machine['load_average_before'][0]:.1f} on "
                   f"{machine['cores']} cores before the run): other processes share the cores, the figures "
                   "(torch's above all, whose threads wait for each other) are not reliable."), ""]
    if settings["quick"]:
        lines += [("**Quick run** (`--quick`): the `tiny` configuration, 16 new tokens, 1 repeat, small texts. "
                   "It checks that the script works; its figures are not the goals' setting."), ""]

    def section(title: str, name: str, note: str, columns: list[tuple[str, object]]) -> None:
        """One table: `columns` are (header, cell function of a row); a status column ends each."""
        chosen = [r for r in rows if r["section"] == name]
        if not chosen:
            return
        headers = [header for header, _ in columns] + ["peak RSS MB", "status"]
        lines.extend([f"## {title}", "", note, "", "| " + " | ".join(headers) + " |",
                      "|---|" + "---:|" * (len(headers) - 2) + "---|"])
        for row in chosen:
            status = "ok" if row["status"] == "ok" else f"{row['status']}: {row.get('reason', '')}"
            cells = [cell(row) for _, cell in columns] + [fmt(row.get("peak_rss_mb"), ",.0f"), status]
            lines.append("| " + " | ".join(str(c).replace("|", "/").replace("\n", " ") for c in cells) + " |")
        lines.append("")

    section("Roofline", "roofline",
            "Memory read bandwidth (numpy reductions over a buffer far beyond the caches, best pass of each; the "
            "fastest is the roofline): decoding reads every weight once a step, so a batch of B makes at most "
            "B x bandwidth / weight bytes tokens/s. A floor: a kernel may read faster than numpy does.",
            [("reader", lambda r: r["name"]), ("buffer MB", lambda r: fmt(r.get("buffer_mb"), ",.0f")),
             ("read GB/s", lambda r: fmt(r.get("read_gb_per_s"), ".1f"))])
    section("Generation", "generation",
            f"`{settings['generate_config']}` randomly initialised, greedy, {settings['new_tokens']} new tokens per row, "
            f"end-of-text ignored; steady = median of {settings['repeats']} calls after the first. "
            "Same prefix: how many of the batch-1 tokens equal ours keras float32's.",
            [("contender", lambda r: r["name"]), ("batch", lambda r: fmt(r.get("batch_size"), "d")),
             ("first call s", lambda r: fmt(r.get("first_call_s"), ".2f")),
             ("steady s", lambda r: fmt(r.get("steady_s"), ".3f")),
             ("tokens/s", lambda r: fmt(r.get("tokens_per_s"), ".1f")),
             ("vs stock", lambda r: fmt(r.get("vs_stock"), ".2f", "x")),
             ("vs torch", lambda r: fmt(r.get("vs_torch"), ".2f", "x")),
             ("weights MB", lambda r: fmt(r.get("weight_bytes") and r["weight_bytes"] / 1e6, ",.0f")),
             ("roofline tok/s", lambda r: fmt(r.get("roofline_tokens_per_s"), ",.0f")),
             ("of roofline", lambda r: fmt(r.get("of_roofline"), ".2f")),
             ("same prefix", lambda r: fmt(r.get("same_greedy_prefix"), "d", f"/{r.get('new_tokens_per_row')}")),
             ("device", lambda r: r.get("device", ""))])
    section("Training", "training",
            f"`{settings['train_config']}`, sequence {settings['train_seq_len']}, batch {settings['train_batch_size']}, "
            f"float32, AdamW; median step time of {settings['train_steps']} steps, the first left out.",
            [("mode", lambda r: r["name"] + (" (XLA)" if r.get("xla") else "")),
             ("step s", lambda r: fmt(r.get("step_s"), ".3f")),
             ("first step s", lambda r: fmt(r.get("first_step_seconds"), ".2f")),
             ("tokens/s", lambda r: fmt(r.get("tokens_per_s"), ".0f")),
             ("vs PyTorch", lambda r: fmt(r.get("vs_pytorch"), ".2f", "x")),
             ("device", lambda r: r.get("device", ""))])
    scoring = next((c for c in document["cases"] if c["case"] == "scoring" and "scoring_over_forward" in c), None)
    runtime_scoring = next((c for c in document["cases"] if c["case"] == "scoring-runtime"
                            and "scoring_over_forward" in c), None)
    section("Perplexity scoring", "scoring",
            f"`{settings['score_config']}`, texts of {settings['score_length']} tokens (at most the context), "
            f"batch {settings['score_batch_size']}; median of {settings['repeats']} after a warm-up."
            + (f" Keras: scoring / forward throughput {scoring['scoring_over_forward']:.3f} (goal: at least 0.9)."
               if scoring else "")
            + (f" Runtime: scoring / forward throughput {runtime_scoring['scoring_over_forward']:.3f} "
               "(goal: at least 0.9)." if runtime_scoring else ""),
            [("what", lambda r: r["name"]), ("seconds", lambda r: fmt(r.get("seconds"), ".3f")),
             ("tokens/s", lambda r: fmt(r.get("tokens_per_s"), ".0f")), ("device", lambda r: r.get("device", ""))])
    agree = document.get("tokenizers_agree")
    difference = next((r.get("first_difference") for r in rows if r.get("first_difference")), None)
    agreement = ("" if agree is None else
                 " Identical ids on the sample: " + ("yes." if agree else "**no**.")
                 + (f" KerasHub first differs in sample document {difference['document']}, token {difference['token']}:"
                    f" tiktoken {difference['tiktoken']!r}, KerasHub {difference['this']!r}." if difference else ""))
    section("Tokenization", "tokenization",
            "The standard library's .py files, one document each; steady = median of "
            f"{settings['repeats']} after the first.{agreement}",
            [("tokenizer", lambda r: r["name"]), ("MB", lambda r: fmt(r.get("megabytes"), ".2f")),
             ("MB/s", lambda r: fmt(r.get("mb_per_s"), ".2f")),
             ("vs tiktoken", lambda r: fmt(r.get("vs_tiktoken"), ".2f", "x")),
             ("sample ids digest", lambda r: f"`{r['sample_digest']}`" if "sample_digest" in r else "")])
    section("Start-up", "start-up",
            f"Medians of {settings['help_runs']} (`--help`) and {settings['load_runs']} (load) fresh processes; "
            "the load is timed inside the process, from `import registry` on.",
            [("what", lambda r: r["name"]), ("seconds", lambda r: fmt(r.get("seconds"), ".2f")),
             ("process wall s", lambda r: fmt(r.get("process_s"), ".2f"))])
    section("Logging overhead", "logging overhead",
            f"`{settings['logging_config']}` fine-tune, {settings['logging_steps']} steps, median step time "
            "(the first of each run left out); the step curves stream to MLflow during training (in the step times), "
            "the rest in one upload when the run is recorded.",
            [("path", lambda r: r["name"]), ("step ms", lambda r: fmt(r.get("step_s") and r["step_s"] * 1000, ".1f")),
             ("overhead", lambda r: fmt(r.get("overhead_pct"), "+.1f", " %")),
             ("MLflow upload s", lambda r: fmt(r.get("mlflow_log_metrics_s"), ".3f")),
             ("overhead incl. upload", lambda r: fmt(r.get("overhead_with_upload_pct"), "+.1f", " %"))])
    section("Light inference", "light inference",
            "Each call a fresh process (`gpt2reg generate REF \"The Python tutorial\" --max-new-tokens N`), wall "
            f"seconds from outside, median of {settings['light_runs']}; the repeated rows are `Registry.stream` "
            "calls in one process, the call to its first token. Same tokens: against the light call's.",
            [("what", lambda r: r["name"]), ("seconds", lambda r: fmt(r.get("seconds"), ".2f")),
             ("first call s", lambda r: fmt(r.get("first_call_s"), ".2f")),
             ("same tokens", lambda r: "" if "same_tokens" not in r else ("yes" if r["same_tokens"] else "no"))])
    section("Serving", "serving",
            "`mlflow models serve --env-manager local` of a `tiny` variant; each request one prompt, `top_k`. The "
            "pyfunc answers whole: time to first token is a 1-token request's time, tokens/s a 64-token request's "
            "new tokens over its time (p1: the slowest 1 %); total: every new token of the run over its wall time.",
            [("what", lambda r: r["name"]), ("seconds", lambda r: fmt(r.get("seconds"), ".2f")),
             ("TTFT p50 s", lambda r: fmt(r.get("ttft_p50_s"), ".3f")),
             ("TTFT p99 s", lambda r: fmt(r.get("ttft_p99_s"), ".3f")),
             ("tok/s p50", lambda r: fmt(r.get("tokens_per_s_p50"), ".0f")),
             ("tok/s p1", lambda r: fmt(r.get("tokens_per_s_p1"), ".0f")),
             ("total tok/s", lambda r: fmt(r.get("total_tokens_per_s"), ".0f"))])
    section("How cost grows", "cost growth",
            "Ours, onnxruntime on the CPU, random weights (`bench/growth.py`): each axis with the others held "
            f"(context: `{settings['generate_config']}`, batch 1; batch: `{settings['generate_config']}`, the "
            "shortest context; model: batch 1, the shortest context). "
            f"Tokens/s of {settings['growth_steps']} steps after the prompt's prefill, best of "
            f"{max(3, settings['repeats'])}; weights read: bytes a step reads; roofline as in the generation table."
            + (f" Plot: `{document['growth_png']}`." if document.get("growth_png") else ""),
            [("axis", lambda r: r.get("axis", "")), ("model", lambda r: r.get("config", "")),
             ("precision", lambda r: r.get("precision", "")), ("batch", lambda r: fmt(r.get("batch_size"), "d")),
             ("context", lambda r: fmt(r.get("context"), ",d")),
             ("tokens/s", lambda r: fmt(r.get("tokens_per_s"), ",.1f")),
             ("weights MB", lambda r: fmt(r.get("weight_bytes") and r["weight_bytes"] / 1e6, ",.0f")),
             ("of roofline", lambda r: fmt(r.get("of_roofline"), ".2f")),
             ("of shortest-context rate", lambda r: fmt(r.get("of_shortest_context"), ".2f")),
             ("graph build s", lambda r: fmt(r.get("build_s"), ".1f"))])
    lines += ["## Goals", "", "| goal | target | measured | status |", "|---|---|---:|---|"]
    for goal in document["goals"]:
        status = "not measured" if goal["met"] is None else ("met" if goal["met"] else "not met")
        lines.append(f"| {goal['goal']} | {goal['target']} | {fmt(goal['value'], '.2f', goal['unit'])} | {status} |")
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
