"""Flux with Long-CLIP-L, random weights: prompt encoding and end-to-end overhead (CPU), or the full-size run (GPU).

CPU (default):
Stage 1 (encoding): a 246-token prompt encoded for Flux (CLIP-L pooled vector + T5 states) by
  * stock FluxPipeline (CLIP-L reads 77 tokens, the rest truncated),
  * sd_embed-style 77-token chunking of CLIP-L: windows [start, 75 tokens, end, pad] as one batch, pooled vector
    averaged over the windows; T5 as stock,
  * LongCLIPFluxPipeline (one 248-token Long-CLIP-L pass; T5 as stock).
  CLIP-L at full size (123 M); T5 at T5-XXL's real width (4096, 64 heads, d_ff 10240) but ``--t5-layers`` of its 24
  layers (full T5-XXL is 19 GB in fp32); the 24-layer line scales the measured T5 time by 24 / layers.
Stage 2 (end to end): stock FluxPipeline vs LongCLIPFluxPipeline sharing the same components (CLIP-L weights shared;
only the position table differs), plus diffusers' FluxPipeline given our 248-position components; a small transformer
(real joint/pooled widths), the real FLUX VAE shape, T5 as above; runs interleaved.

GPU (``--gpu``): FLUX.1-dev shapes at full size (transformer 12 B, T5-XXL 24 layers, CLIP-L, VAE), random weights,
bf16, 1024², 28 steps: stock vs ours with the same components, median wall time, ratio and peak CUDA memory.

Run: python benchmarks/bench_flux.py [--repeats 3] [--t5-layers 1] [--latent 16] [--steps 4] [--threads N]
     python benchmarks/bench_flux.py --gpu [--repeats 3] [--steps 28] [--size 1024]   (see benchmarks/gpu_flux.sh)
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import statistics
import sys
import time

import torch
from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
from transformers import CLIPTextModel, T5EncoderModel

from longclip_diffusion.pipelines import LongCLIPFluxPipeline
from longclip_diffusion.pipelines.flux import clip_pooled_output
from longclip_diffusion.positions import position_embedding
from longclip_diffusion.testing import benchmark_prompt, full_size_clip_l_config, random_init, with_position_table
from longclip_diffusion.testing_mmdit import (
    full_size_flux_transformer,
    full_size_flux_vae,
    full_size_t5_xxl_config,
    tiny_t5_tokenizer,
)
from longclip_diffusion.tokenizer import END_OF_TEXT, START_OF_TEXT, load_tokenizer, token_ids

PROMPT = benchmark_prompt()  # exactly what Long-CLIP reads: no truncation on our side
T5_LAYERS_FULL = 24


def median_seconds(function, repeats: int, synchronize: bool = False) -> float:
    times = []
    for _ in range(repeats):
        if synchronize:
            torch.cuda.synchronize()
        start = time.perf_counter()
        function()
        if synchronize:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def build(factory, device: str = "cpu", dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    torch.manual_seed(0)
    with torch.device("meta"):
        model = factory()
    return random_init(model, device, dtype)


@torch.no_grad()
def chunked_pooled(clip_l: CLIPTextModel, prompt: str) -> torch.Tensor:
    """sd_embed style for Flux: CLIP-L reads [start, 75 tokens, end, pad…] windows (one batch); the pooled vector is
    the average of the windows' pooled outputs."""
    ids = token_ids([prompt])[0]
    rows = []
    for start in range(0, max(len(ids), 1), 75):
        chunk = ids[start : start + 75]
        rows.append([START_OF_TEXT, *chunk, END_OF_TEXT] + [END_OF_TEXT] * (75 - len(chunk)))
    return clip_l(torch.tensor(rows, device=clip_l.device)).pooler_output.mean(dim=0, keepdim=True)


def encoders(t5_layers: int, device: str = "cpu", dtype: torch.dtype = torch.float32):
    clip_l = build(lambda: CLIPTextModel(full_size_clip_l_config(77)), device, dtype)
    position_embedding(clip_l).weight.data.normal_(0.0, 0.01)
    t5 = build(lambda: T5EncoderModel(full_size_t5_xxl_config(t5_layers)), device, dtype)
    return clip_l, with_position_table(clip_l, 248), t5


def pipelines(clip_l, long_clip_l, t5, **common):
    """stock (77), ours (248), and diffusers' FluxPipeline given our 248-position components."""
    common = dict(text_encoder_2=t5, tokenizer_2=tiny_t5_tokenizer(), **common)
    stock = FluxPipeline(text_encoder=clip_l, tokenizer=load_tokenizer(77), **common)
    ours = LongCLIPFluxPipeline(text_encoder=long_clip_l, tokenizer=load_tokenizer(248), **common)
    stock_same = FluxPipeline(text_encoder=long_clip_l, tokenizer=load_tokenizer(248), **common)
    for pipeline in (stock, ours, stock_same):
        pipeline.set_progress_bar_config(disable=True)
    return stock, ours, stock_same


def stage_encoding(repeats: int, t5_layers: int, sequence: int) -> None:
    clip_l, long_clip_l, t5 = encoders(t5_layers)
    none = dict(transformer=None, vae=None, scheduler=FlowMatchEulerDiscreteScheduler())
    stock, ours, stock_same = pipelines(clip_l, long_clip_l, t5, **none)
    cpu = torch.device("cpu")
    num_tokens = len(token_ids([PROMPT])[0])

    def encode(pipeline):
        with torch.no_grad():
            return pipeline.encode_prompt(PROMPT, device=cpu, max_sequence_length=sequence)

    def t5_only():
        with torch.no_grad():
            return stock._get_t5_prompt_embeds(PROMPT, max_sequence_length=sequence, device=cpu)

    def chunked():
        return chunked_pooled(clip_l, PROMPT), t5_only()

    windows = -(-num_tokens // 75)
    clip_cases = [
        ("stock CLIP-L (77, truncated)", lambda: stock._get_clip_prompt_embeds(PROMPT, device=cpu)),
        (f"sd_embed-style chunking ({windows} windows, pooled averaged)", lambda: chunked_pooled(clip_l, PROMPT)),
        ("Long-CLIP-L, one 248-token pass", lambda: clip_pooled_output(long_clip_l, ours.tokenizer, [PROMPT], cpu)),
        ("diffusers' CLIP path on the same 248-position encoder", lambda: stock_same._get_clip_prompt_embeds(PROMPT, device=cpu)),
    ]

    full_cases = [
        ("stock FluxPipeline (CLIP-L 77, truncated)", lambda: encode(stock)),
        ("sd_embed-style chunking of CLIP-L + T5", chunked),
        ("LongCLIPFluxPipeline (Long-CLIP-L 248 + T5)", lambda: encode(ours)),
    ]
    cases = clip_cases + full_cases + [("T5 alone", t5_only)]
    with torch.no_grad():
        for _, function in cases:  # warm-up
            function()
        timings = {name: [] for name, _ in cases}
        for _ in range(repeats):  # interleaved, so load from other processes hits all cases alike
            for name, function in cases:
                timings[name].append(median_seconds(function, 1))
    median = {name: statistics.median(values) for name, values in timings.items()}
    t5_time = median["T5 alone"]
    scale = T5_LAYERS_FULL / t5_layers

    print(f"\n### CLIP-L part ({num_tokens}-token prompt, CLIP-L 123 M, fp32 CPU)\n")
    print("| method | median s | vs chunking |")
    print("|---|---:|---:|")
    for name, _ in clip_cases:
        print(f"| {name} | {median[name]:.3f} | {median[name] / median[clip_cases[1][0]]:.2f}× |")
    print(f"\n### Whole Flux prompt encoding (CLIP-L + T5 at real width, {t5_layers} of 24 layers, "
          f"max_sequence_length {sequence})\n")
    print(f"| method | median s ({t5_layers} T5 layer{'s' * (t5_layers > 1)}) | vs chunking | "
          "24-layer estimate s | vs chunking |")
    print("|---|---:|---:|---:|---:|")
    baseline, baseline_full = median[full_cases[1][0]], median[full_cases[1][0]] + t5_time * (scale - 1)
    for name, _ in full_cases:
        estimate = median[name] + t5_time * (scale - 1)
        print(f"| {name} | {median[name]:.3f} | {median[name] / baseline:.2f}× | {estimate:.2f} | "
              f"{estimate / baseline_full:.3f}× |")
    print(f"| T5 alone | {t5_time:.3f} | | {t5_time * scale:.2f} | |")
    del stock, ours, stock_same, clip_l, long_clip_l, t5
    gc.collect()


def small_transformer() -> FluxTransformer2DModel:
    """Flux's interfaces at their real widths (64 latent inputs, T5 4096, pooled 768, guidance), a small body."""
    return FluxTransformer2DModel(
        num_layers=1,
        num_single_layers=2,
        attention_head_dim=64,
        num_attention_heads=4,
        guidance_embeds=True,
        axes_dims_rope=(16, 24, 24),
    )


def stage_end_to_end(repeats: int, t5_layers: int, sequence: int, latent: int, steps: int) -> None:
    clip_l, long_clip_l, t5 = encoders(t5_layers)
    common = dict(transformer=build(small_transformer), vae=build(full_size_flux_vae),
                  scheduler=FlowMatchEulerDiscreteScheduler())
    stock, ours, stock_same = pipelines(clip_l, long_clip_l, t5, **common)
    size = latent * 8

    def run(pipeline):
        with torch.no_grad():
            pipeline(PROMPT, num_inference_steps=steps, height=size, width=size, guidance_scale=3.5,
                     max_sequence_length=sequence, generator=torch.Generator().manual_seed(0), output_type="pil")

    cases = {"stock": stock, "ours": ours, "stock_same": stock_same}
    for pipeline in cases.values():  # warm-up
        run(pipeline)
    timings = {name: [] for name in cases}
    for _ in range(repeats):
        for name, pipeline in cases.items():
            timings[name].append(median_seconds(lambda: run(pipeline), 1))
    stock_time, ours_time, same_time = (statistics.median(timings[name]) for name in cases)
    fastest = {name: min(values) for name, values in timings.items()}
    # Runs are interleaved, so each repeat is a pair measured under the same load: the median of the paired ratios.
    paired = {name: statistics.median(o / s for o, s in zip(timings["ours"], timings[name])) for name in ("stock", "stock_same")}
    print(f"\n### End to end ({size}×{size} px, {latent}×{latent} latents, {steps} steps, small transformer, "
          f"FLUX VAE, T5 {t5_layers} of 24 layers at real width, max_sequence_length {sequence})\n")
    print("| pipeline | median s | fastest s | ours vs it (median of paired runs) |")
    print("|---|---:|---:|---:|")
    print(f"| stock FluxPipeline (CLIP-L 77) | {stock_time:.2f} | {fastest['stock']:.2f} | "
          f"{100 * (paired['stock'] - 1):+.1f} % |")
    print(f"| stock FluxPipeline, same 248-position components | {same_time:.2f} | {fastest['stock_same']:.2f} | "
          f"{100 * (paired['stock_same'] - 1):+.1f} % |")
    print(f"| LongCLIPFluxPipeline (Long-CLIP-L 248) | {ours_time:.2f} | {fastest['ours']:.2f} | — |")


def stage_gpu(repeats: int, steps: int, size: int) -> None:
    """FLUX.1-dev at full size on one CUDA device, bf16, random weights: stock vs ours, same components."""
    device, dtype = "cuda", torch.bfloat16
    start = time.perf_counter()
    clip_l, long_clip_l, t5 = encoders(T5_LAYERS_FULL, device, dtype)
    common = dict(transformer=build(full_size_flux_transformer, device, dtype), vae=build(full_size_flux_vae, device, dtype),
                  scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True))
    stock, ours, _ = pipelines(clip_l, long_clip_l, t5, **common)
    print(f"(built in {time.perf_counter() - start:.0f} s; transformer "
          f"{sum(p.numel() for p in common['transformer'].parameters()) / 1e9:.2f} B parameters)", file=sys.stderr)

    def run(pipeline):
        with torch.no_grad():
            pipeline(PROMPT, num_inference_steps=steps, height=size, width=size, guidance_scale=3.5,
                     max_sequence_length=512, generator=torch.Generator("cpu").manual_seed(0), output_type="pt")

    cases = {"stock FluxPipeline (CLIP-L 77)": stock, "LongCLIPFluxPipeline (Long-CLIP-L 248)": ours}
    for pipeline in cases.values():  # warm-up (kernels, allocator)
        run(pipeline)
    timings, peaks = {name: [] for name in cases}, {name: 0 for name in cases}
    for _ in range(repeats):
        for name, pipeline in cases.items():
            torch.cuda.reset_peak_memory_stats()
            timings[name].append(median_seconds(lambda: run(pipeline), 1, synchronize=True))
            peaks[name] = max(peaks[name], torch.cuda.max_memory_allocated())
    names = list(cases)
    base = statistics.median(timings[names[0]])
    print(f"\n### GPU: FLUX.1-dev shapes, bf16, {size}×{size}, {steps} steps ({torch.cuda.get_device_name()})\n")
    print("| pipeline | median s | vs stock | peak GiB |")
    print("|---|---:|---:|---:|")
    for name in names:
        value = statistics.median(timings[name])
        print(f"| {name} | {value:.2f} | {value / base:.3f}× | {peaks[name] / 2**30:.2f} |")
    print(f"runs (s): { {name: [round(t, 2) for t in values] for name, values in timings.items()} }")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--t5-layers", type=int, default=1, help="T5-XXL layers at real width on CPU (of 24)")
    parser.add_argument("--sequence", type=int, default=512, help="T5 max_sequence_length (FLUX.1-dev: 512)")
    parser.add_argument("--latent", type=int, default=16, help="CPU end to end: latent side (image side = 8×)")
    parser.add_argument("--steps", type=int, default=None, help="denoising steps (CPU default 4, GPU default 28)")
    parser.add_argument("--size", type=int, default=1024, help="GPU: image side in pixels")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--skip-e2e", action="store_true")
    parser.add_argument("--skip-encoding", action="store_true")
    parser.add_argument("--gpu", action="store_true", help="the full-size FLUX.1-dev run on CUDA instead")
    args = parser.parse_args()
    sys.stdout.reconfigure(line_buffering=True)  # tables appear as each stage ends, also when redirected
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.set_verbosity_error()  # the stock 77-token run would print its truncation warning every call
    transformers_logging.set_verbosity_error()
    logging.getLogger("longclip_diffusion").setLevel(logging.ERROR)  # and T5's dropped-words warning, ours too
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"Command: python benchmarks/bench_flux.py {' '.join(sys.argv[1:])}".rstrip())
    load = " ".join(f"{value:.1f}" for value in os.getloadavg())
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, load average {load}")
    if args.gpu:
        if not torch.cuda.is_available():
            raise SystemExit("--gpu needs a CUDA device; none is available here.")
        stage_gpu(args.repeats, args.steps or 28, args.size)
        return
    torch.set_flush_denormal(True)
    if not args.skip_encoding:
        stage_encoding(args.repeats, args.t5_layers, args.sequence)
    if not args.skip_e2e:
        stage_end_to_end(args.repeats, args.t5_layers, args.sequence, args.latent, args.steps or 4)
    print(f"load average after: {' '.join(f'{value:.1f}' for value in os.getloadavg())}")


if __name__ == "__main__":
    main()
