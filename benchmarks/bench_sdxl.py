"""SDXL with Long-CLIP, full-size random weights on CPU: prompt encoding and end-to-end overhead.

Stage 1 (encoding, prompt + negative as classifier-free guidance needs): a 246-token prompt encoded by
  * stock SDXL (77 tokens, the rest truncated),
  * 77-token window chunking of both encoders, joined on the token axis (compel / sd_embed style: 4 windows, 308
    positions; the negative padded to the same window count),
  * LongCLIPStableDiffusionXLPipeline, bigG "stretch" (one 248-token pass per encoder) and bigG "windows".
Stage 2 (end to end): the real SDXL UNet and VAE shapes at a small latent size, stock StableDiffusionXLPipeline vs
LongCLIPStableDiffusionXLPipeline sharing the same UNet, VAE and encoder weights (only the position tables differ),
runs interleaved; plus one UNet step with 77 / 248 / 308 context tokens.

Run: python benchmarks/bench_sdxl.py [--repeats 5] [--latent 16] [--steps 4] [--step-latents 16 32] [--threads N]
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time

import torch
from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline
from transformers import CLIPTextModel, CLIPTextModelWithProjection

from longclip_diffusion.pipelines import LongCLIPStableDiffusionXLPipeline
from longclip_diffusion.positions import position_embedding
from longclip_diffusion.testing import (
    benchmark_prompt,
    full_size_bigg_config,
    full_size_clip_l_config,
    full_size_sdxl_unet,
    full_size_vae,
    random_init,
    sdxl_tokenizer_2,
    with_position_table,
)
from longclip_diffusion.tokenizer import END_OF_TEXT, START_OF_TEXT, load_tokenizer, token_ids

PROMPT = benchmark_prompt()  # exactly what Long-CLIP reads: no truncation on our side
NEGATIVE = "blurry, low resolution, watermark, text, oversaturated, deformed hands"


def median_seconds(function, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def build_encoders():
    torch.manual_seed(0)
    with torch.device("meta"):
        clip_l = CLIPTextModel(full_size_clip_l_config(77))
        bigg = CLIPTextModelWithProjection(full_size_bigg_config(77))
    clip_l, bigg = random_init(clip_l), random_init(bigg)
    for module in (clip_l, bigg):
        position_embedding(module).weight.data.normal_(0.0, 0.01)
    return clip_l, bigg


@torch.no_grad()
def chunked_encode(clip_l, bigg, prompts: list[str], num_windows: int):
    """compel / sd_embed style: windows of [start, 75 tokens, end, pad] per encoder, joined on the token axis."""
    rows = []
    for ids in token_ids(prompts):
        for window in range(num_windows):
            chunk = ids[75 * window : 75 * (window + 1)]
            rows.append([START_OF_TEXT, *chunk, END_OF_TEXT] + [END_OF_TEXT] * (75 - len(chunk)))
    input_ids = torch.tensor(rows)
    out_l = clip_l(input_ids, output_hidden_states=True).hidden_states[-2]
    bigg_ids = input_ids.clone()
    for row in bigg_ids:  # bigG pads with 0 after the first end-of-text
        end = int((row == END_OF_TEXT).int().argmax())
        row[end + 1 :] = 0
    out_g = bigg(bigg_ids, output_hidden_states=True)
    states = torch.cat([out_l, out_g.hidden_states[-2]], dim=-1)
    states = states.view(len(prompts), num_windows * 77, -1)
    end = (bigg_ids == END_OF_TEXT).int().argmax(-1)
    pooled = out_g.text_embeds.view(len(prompts), num_windows, -1)[:, 0]
    return states, pooled, end


def stage_encoding(repeats: int, results: list) -> None:
    clip_l, bigg = build_encoders()
    long_clip_l, long_bigg = with_position_table(clip_l, 248), with_position_table(bigg, 248)
    num_tokens = len(token_ids([PROMPT])[0])
    common = dict(vae=None, unet=None, scheduler=None, tokenizer_2=sdxl_tokenizer_2(), force_zeros_for_empty_prompt=False)
    stock = StableDiffusionXLPipeline(text_encoder=clip_l, text_encoder_2=bigg, tokenizer=load_tokenizer(77), **common)
    stretch = LongCLIPStableDiffusionXLPipeline(
        text_encoder=long_clip_l, text_encoder_2=long_bigg, tokenizer=load_tokenizer(), **common
    )
    windows = LongCLIPStableDiffusionXLPipeline(
        text_encoder=long_clip_l, text_encoder_2=bigg, tokenizer=load_tokenizer(), long_clip_bigg_mode="windows", **common
    )
    cpu = torch.device("cpu")

    def encode(pipeline):
        with torch.no_grad():
            return pipeline.encode_prompt(PROMPT, device=cpu, negative_prompt=NEGATIVE)

    windows_needed = -(-min(num_tokens, 300) // 75)
    cases = [
        ("stock SDXL (77, truncated)", lambda: encode(stock), 77),
        (f"77-token chunking, both encoders ({windows_needed} windows)", lambda: chunked_encode(clip_l, bigg, [PROMPT, NEGATIVE], windows_needed), 77 * windows_needed),
        ("Long-CLIP SDXL, bigG stretch (248)", lambda: encode(stretch), 248),
        ("Long-CLIP SDXL, bigG windows (248)", lambda: encode(windows), 248),
    ]
    for _, function, _ in cases:  # warm-up
        function()
    timings = {name: [] for name, _, _ in cases}
    for _ in range(repeats):  # interleaved, so load from other processes hits all cases alike
        for name, function, _ in cases:
            timings[name].append(median_seconds(function, 1))
    baseline = statistics.median(timings[cases[1][0]])
    print(f"\n### Prompt encoding ({num_tokens}-token prompt + negative, CLIP-L 123 M + bigG 695 M, fp32 CPU)\n")
    print("| method | positions | median s | vs chunking |")
    print("|---|---:|---:|---:|")
    for name, _, positions in cases:
        value = statistics.median(timings[name])
        print(f"| {name} | {positions} | {value:.3f} | {value / baseline:.2f}× |")
        results.append(("encode", name, positions, value))
    del stock, stretch, windows, clip_l, bigg, long_clip_l, long_bigg
    gc.collect()


def stage_end_to_end(repeats: int, latent: int, steps: int, step_latents: list[int], results: list) -> None:
    clip_l, bigg = build_encoders()
    long_clip_l, long_bigg = with_position_table(clip_l, 248), with_position_table(bigg, 248)
    start = time.perf_counter()
    torch.manual_seed(0)
    with torch.device("meta"):
        unet = full_size_sdxl_unet()
        vae = full_size_vae()
    unet, vae = random_init(unet), random_init(vae)
    print(f"\n(SDXL UNet {sum(p.numel() for p in unet.parameters()) / 1e9:.2f} B parameters built in "
          f"{time.perf_counter() - start:.0f} s)", file=sys.stderr)
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1, timestep_spacing="leading"
    )
    common = dict(unet=unet, vae=vae, scheduler=scheduler, tokenizer_2=sdxl_tokenizer_2(), add_watermarker=False)
    stock = StableDiffusionXLPipeline(text_encoder=clip_l, text_encoder_2=bigg, tokenizer=load_tokenizer(77), **common)
    ours = LongCLIPStableDiffusionXLPipeline(
        text_encoder=long_clip_l, text_encoder_2=long_bigg, tokenizer=load_tokenizer(), **common
    )
    # diffusers' own pipeline given the same 248-position components: isolates what our encoding code costs
    stock_same = StableDiffusionXLPipeline(
        text_encoder=long_clip_l, text_encoder_2=long_bigg, tokenizer=load_tokenizer(),
        **{**common, "tokenizer_2": sdxl_tokenizer_2(248)},
    )
    for pipeline in (stock, ours, stock_same):
        pipeline.set_progress_bar_config(disable=True)
    size = latent * 8

    def run(pipeline):
        with torch.no_grad():
            pipeline(PROMPT, negative_prompt=NEGATIVE, num_inference_steps=steps, height=size, width=size,
                     generator=torch.Generator().manual_seed(0), output_type="pil")

    # One UNet step (batch 2, classifier-free guidance) with each context length, at each latent size.
    step = {}
    for side in step_latents:
        sample = torch.randn(2, 4, side, side)
        added = {"text_embeds": torch.randn(2, 1280), "time_ids": torch.tensor([[8.0 * side, 8.0 * side, 0, 0, 8.0 * side, 8.0 * side]] * 2)}
        for context in (77, 248, 308):
            states = torch.randn(2, context, 2048)
            with torch.no_grad():
                unet(sample, 500, states, added_cond_kwargs=added)  # warm-up
                step[side, context] = median_seconds(lambda: unet(sample, 500, states, added_cond_kwargs=added), repeats)

    run(stock), run(ours), run(stock_same)  # warm-up
    timings = {"stock": [], "ours": [], "stock_same": []}
    for _ in range(repeats):
        timings["stock"].append(median_seconds(lambda: run(stock), 1))
        timings["ours"].append(median_seconds(lambda: run(ours), 1))
        timings["stock_same"].append(median_seconds(lambda: run(stock_same), 1))
    stock_time, ours_time = statistics.median(timings["stock"]), statistics.median(timings["ours"])
    same_time = statistics.median(timings["stock_same"])

    print("\n### One SDXL UNet step (batch 2 for guidance), by context length\n")
    print("| latents | context tokens | median s | vs 77 |")
    print("|---:|---:|---:|---:|")
    for (side, context), value in step.items():
        print(f"| {side}×{side} | {context} | {value:.3f} | {value / step[side, 77]:.3f}× |")
        results.append(("unet_step", context, side, value))
    print(f"\n### End to end ({size}×{size} px, {latent}×{latent} latents, {steps} steps, prompt + negative, VAE decode)\n")
    print("| pipeline | median s | overhead |")
    print("|---|---:|---:|")
    print(f"| stock StableDiffusionXLPipeline (77 tokens) | {stock_time:.2f} | — |")
    print(f"| LongCLIPStableDiffusionXLPipeline (248 tokens, stretch) | {ours_time:.2f} | {100 * (ours_time / stock_time - 1):+.1f} % |")
    print(f"| stock StableDiffusionXLPipeline, same 248-position components | {same_time:.2f} | "
          f"ours {100 * (ours_time / same_time - 1):+.1f} % |")
    results.append(("e2e", "stock", latent, stock_time))
    results.append(("e2e", "ours", latent, ours_time))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--latent", type=int, default=16, help="latent side (image side = 8×)")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--step-latents", type=int, nargs="+", default=[16], help="latent sides for the UNet step table")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--skip-e2e", action="store_true")
    parser.add_argument("--skip-encoding", action="store_true")
    args = parser.parse_args()
    sys.stdout.reconfigure(line_buffering=True)  # tables appear as each stage ends, also when redirected
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.set_verbosity_error()  # the stock 77-token run would print its truncation warning every call
    transformers_logging.set_verbosity_error()
    torch.set_flush_denormal(True)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"Command: python benchmarks/bench_sdxl.py {' '.join(sys.argv[1:])}".rstrip())
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    results: list = []
    if not args.skip_encoding:
        stage_encoding(args.repeats, results)
    if not args.skip_e2e:
        stage_end_to_end(args.repeats, args.latent, args.steps, args.step_latents, results)


if __name__ == "__main__":
    main()
