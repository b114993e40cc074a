"""SD 1.x benchmarks with full-size random weights, side by side in one run.

    python benchmarks/bench_sd.py [--repeats 7] [--steps 4] [--workdir /tmp/longclip-bench]

1. encoding one 248-token prompt: Long-CLIP in one pass vs 77-token window chunking (4 windows, as compel/lpw do);
2. end-to-end generation: LongCLIPStableDiffusionPipeline vs stock StableDiffusionPipeline, same components and steps
   (and, for information, vs the stock 77-token CLIP);
3. `convert` of a full-size Long-CLIP-L checkpoint (ViT-L/14 vision + text, fp32, ≈ 1.7 GB): wall time, peak memory;
4. peak memory of loading the pipeline with a Long-CLIP file vs the stock pipeline (no duplicate text encoder).

Memory stages run in fresh subprocesses (peak RSS from getrusage). Prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

PROMPT_WORDS = "a weathered lighthouse on a basalt cliff at dusk with gulls and fishing boats below"


def median_seconds(function, repeats: int) -> float:
    function()  # warm-up
    timings = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        timings.append(time.perf_counter() - start)
    return statistics.median(timings)


def peak_rss_mb() -> float:
    """This process's peak resident memory (VmHWM; getrusage would keep the forking parent's peak across exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def prompt_of(tokens: int) -> str:
    from longclip_diffusion.tokenizer import default_tokenizer

    words, text = PROMPT_WORDS.split(), []
    while len(default_tokenizer()(" ".join(text), add_special_tokens=False).input_ids) < tokens:
        text.append(words[len(text) % len(words)])
    return " ".join(text[:-1])


def bench_encoding(repeats: int) -> dict:
    from transformers import CLIPTextModel

    from longclip_diffusion.prompts import encode_prompts
    from longclip_diffusion.testing import full_size_clip_l_config
    from longclip_diffusion.tokenizer import END_OF_TEXT, START_OF_TEXT, load_tokenizer

    torch.manual_seed(0)
    long_encoder = CLIPTextModel(full_size_clip_l_config(248)).eval()
    short_encoder = CLIPTextModel(full_size_clip_l_config(77)).eval()
    tokenizer = load_tokenizer()
    prompt = prompt_of(246)

    def long_clip():
        with torch.no_grad():
            encode_prompts(long_encoder, tokenizer, [prompt], pad_token_id=0)

    def window_batch():
        ids = tokenizer(prompt, add_special_tokens=False).input_ids
        chunks = [ids[i : i + 75] for i in range(0, len(ids), 75)]
        return torch.tensor([[START_OF_TEXT, *c, END_OF_TEXT] + [END_OF_TEXT] * (75 - len(c)) for c in chunks])

    def windows_sequential():  # compel / lpw: each 75-token chunk as [start, 75, end] through CLIP, one after another
        with torch.no_grad():
            torch.cat([short_encoder(window[None]).last_hidden_state[0] for window in window_batch()])

    def windows_batched():  # the same windows in one batch (the cheapest form of chunking)
        with torch.no_grad():
            torch.cat(list(short_encoder(window_batch()).last_hidden_state))

    num_windows = -(-len(tokenizer(prompt, add_special_tokens=False).input_ids) // 75)
    one_pass = median_seconds(long_clip, repeats)
    sequential, batched = median_seconds(windows_sequential, repeats), median_seconds(windows_batched, repeats)
    return {"one_pass_s": one_pass, "windows_s": sequential, "ratio": one_pass / sequential,
            "windows_batched_s": batched, "ratio_batched": one_pass / batched, "windows": num_windows}


def bench_generation(repeats: int, steps: int) -> dict:
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline
    from transformers import CLIPTextModel

    from longclip_diffusion.pipelines import LongCLIPStableDiffusionPipeline
    from longclip_diffusion.testing import full_size_clip_l_config, full_size_sd15_unet
    from longclip_diffusion.tokenizer import load_tokenizer

    torch.manual_seed(0)
    components = dict(
        unet=full_size_sd15_unet().eval(),
        vae=AutoencoderKL(
            block_out_channels=(128, 256, 512, 512),
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            latent_channels=4,
            layers_per_block=2,
        ).eval(),
        scheduler=DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, steps_offset=1,
                                clip_sample=False, set_alpha_to_one=False),
        text_encoder=CLIPTextModel(full_size_clip_l_config(248)).eval(),
        tokenizer=load_tokenizer(248),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    ours = LongCLIPStableDiffusionPipeline(**components)
    stock = StableDiffusionPipeline(**components)
    stock_77 = StableDiffusionPipeline(
        **{**components, "text_encoder": CLIPTextModel(full_size_clip_l_config(77)).eval(), "tokenizer": load_tokenizer(77)}
    )
    prompt = prompt_of(246)
    pipelines = {"ours": ours, "stock_same_components": stock, "stock_77": stock_77}
    for pipeline in pipelines.values():
        pipeline.set_progress_bar_config(disable=True)

    def generate(pipeline):
        start = time.perf_counter()
        pipeline(prompt, negative_prompt="blurry", num_inference_steps=steps, height=64, width=64,
                 generator=torch.Generator().manual_seed(0), output_type="latent")
        return time.perf_counter() - start

    timings = {name: [] for name in pipelines}
    for repeat in range(repeats + 1):  # interleaved, so drift hits every pipeline alike; the first round warms up
        for name, pipeline in pipelines.items():
            seconds = generate(pipeline)
            if repeat:
                timings[name].append(seconds)
    results = {name: statistics.median(values) for name, values in timings.items()}
    results["overhead_vs_stock"] = results["ours"] / results["stock_same_components"] - 1
    results["overhead_vs_stock_77"] = results["ours"] / results["stock_77"] - 1
    return results


def make_checkpoint(path: Path) -> None:
    """A random full-size Long-CLIP-L file in the official layout (ViT-L/14 vision + text, two position tables)."""
    g = torch.Generator().manual_seed(0)
    state = {}

    def blocks(prefix: str, width: int, layers: int) -> None:
        for i in range(layers):
            p = f"{prefix}{i}."
            shapes = {"attn.in_proj_weight": (3 * width, width), "attn.in_proj_bias": (3 * width,),
                      "attn.out_proj.weight": (width, width), "attn.out_proj.bias": (width,),
                      "ln_1.weight": (width,), "ln_1.bias": (width,), "ln_2.weight": (width,), "ln_2.bias": (width,),
                      "mlp.c_fc.weight": (4 * width, width), "mlp.c_fc.bias": (4 * width,),
                      "mlp.c_proj.weight": (width, 4 * width), "mlp.c_proj.bias": (width,)}
            for name, shape in shapes.items():
                state[p + name] = torch.randn(shape, generator=g) * 0.02

    blocks("transformer.resblocks.", 768, 12)
    blocks("visual.transformer.resblocks.", 1024, 24)
    state.update({
        "token_embedding.weight": torch.randn(49408, 768, generator=g) * 0.02,
        "positional_embedding": torch.randn(248, 768, generator=g) * 0.01,
        "positional_embedding_res": torch.randn(248, 768, generator=g) * 0.01,
        "ln_final.weight": torch.ones(768), "ln_final.bias": torch.zeros(768),
        "text_projection": torch.randn(768, 768, generator=g) * 0.02,
        "logit_scale": torch.tensor(4.6052),
        "visual.class_embedding": torch.randn(1024, generator=g), "visual.conv1.weight": torch.randn(1024, 3, 14, 14, generator=g),
        "visual.positional_embedding": torch.randn(257, 1024, generator=g), "visual.proj": torch.randn(1024, 768, generator=g),
        "visual.ln_pre.weight": torch.ones(1024), "visual.ln_pre.bias": torch.zeros(1024),
        "visual.ln_post.weight": torch.ones(1024), "visual.ln_post.bias": torch.zeros(1024),
    })
    torch.save(state, path)


def touch_weights(pipeline) -> None:
    """Read every weight once, so memory-mapped ones count as resident like after a first generation."""
    for component in pipeline.components.values():
        if isinstance(component, torch.nn.Module):
            for parameter in component.parameters():
                parameter.data.sum()


def child(stage: str, workdir: Path) -> None:
    """One measured stage in a fresh process; prints a JSON line."""
    start = time.perf_counter()
    if stage == "baseline":  # the libraries loaded, nothing else: what every other stage also pays
        import longclip_diffusion.pipelines  # noqa: F401
    elif stage == "convert_comfy":
        from longclip_diffusion.checkpoints import convert

        convert(workdir / "longclip-L.pt", workdir / "longclip-L.safetensors")
    elif stage == "convert_diffusers":
        from longclip_diffusion.checkpoints import convert

        convert(workdir / "longclip-L.pt", workdir / "longclip-L-diffusers")
    elif stage == "load_stock":
        from diffusers import StableDiffusionPipeline

        touch_weights(StableDiffusionPipeline.from_pretrained(workdir / "sd15-random"))
    elif stage == "load_longclip":
        from longclip_diffusion.pipelines import LongCLIPStableDiffusionPipeline

        touch_weights(LongCLIPStableDiffusionPipeline.from_pretrained(
            workdir / "sd15-random", long_clip=workdir / "longclip-L.safetensors"))
    print(json.dumps({"stage": stage, "seconds": time.perf_counter() - start, "peak_rss_mb": peak_rss_mb()}))


def run_child(stage: str, workdir: Path) -> dict:
    output = subprocess.run([sys.executable, __file__, "--child", stage, "--workdir", str(workdir)],
                            check=True, capture_output=True, text=True).stdout
    return json.loads(output.strip().splitlines()[-1])


def bench_files(workdir: Path) -> dict:
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline
    from transformers import CLIPTextModel

    from longclip_diffusion.testing import full_size_clip_l_config, full_size_sd15_unet
    from longclip_diffusion.tokenizer import load_tokenizer

    workdir.mkdir(parents=True, exist_ok=True)
    if not (workdir / "longclip-L.pt").exists():
        make_checkpoint(workdir / "longclip-L.pt")
    if not (workdir / "sd15-random" / "model_index.json").exists():
        StableDiffusionPipeline(
            unet=full_size_sd15_unet(),
            vae=AutoencoderKL(block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
                              up_block_types=("UpDecoderBlock2D",) * 4, latent_channels=4, layers_per_block=2),
            scheduler=DDIMScheduler(),
            text_encoder=CLIPTextModel(full_size_clip_l_config(77)),
            tokenizer=load_tokenizer(77),
            safety_checker=None, feature_extractor=None, requires_safety_checker=False,
        ).save_pretrained(workdir / "sd15-random")
    baseline = run_child("baseline", workdir)
    results = {"file_mb": (workdir / "longclip-L.pt").stat().st_size / 2**20, "baseline": baseline}
    for stage in ("convert_comfy", "convert_diffusers", "load_stock", "load_longclip"):
        results[stage] = run_child(stage, workdir)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/longclip-bench"))
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.child, args.workdir)

    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.set_verbosity_error()  # the stock 77-token run would print its truncation warning every call
    transformers_logging.set_verbosity_error()
    torch.set_num_threads(os.cpu_count() or 1)
    torch.set_flush_denormal(True)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU fp32", flush=True)
    encoding = bench_encoding(args.repeats)
    print(json.dumps(encoding), flush=True)
    generation = bench_generation(args.repeats, args.steps)
    print(json.dumps(generation), flush=True)
    files = bench_files(args.workdir)
    print(json.dumps(files), flush=True)

    base_mb = files["baseline"]["peak_rss_mb"]
    print("\n| measurement | Long-CLIP | baseline | ratio / overhead |\n|---|---|---|---|")
    print(f"| encode one 246-token prompt (CLIP-L shape) | {encoding['one_pass_s'] * 1e3:.0f} ms (1 pass of 248) | "
          f"{encoding['windows_s'] * 1e3:.0f} ms ({encoding['windows']} windows of 77, one after another, as compel/lpw) | "
          f"{encoding['ratio']:.2f}× |")
    print(f"| same, vs the windows batched in one pass | {encoding['one_pass_s'] * 1e3:.0f} ms | "
          f"{encoding['windows_batched_s'] * 1e3:.0f} ms | {encoding['ratio_batched']:.2f}× |")
    print(f"| generate, SD1.5 UNet, 64 px, {args.steps} steps, CFG | {generation['ours']:.2f} s | "
          f"{generation['stock_same_components']:.2f} s (stock pipeline, same components) | "
          f"{generation['overhead_vs_stock'] * 100:+.1f} % |")
    print(f"| same, vs stock 77-token CLIP (information) | {generation['ours']:.2f} s | {generation['stock_77']:.2f} s | "
          f"{generation['overhead_vs_stock_77'] * 100:+.1f} % |")
    for stage, label in (("convert_comfy", "convert → ComfyUI file"), ("convert_diffusers", "convert → diffusers folder")):
        extra = files[stage]["peak_rss_mb"] - base_mb
        print(f"| {label} ({files['file_mb']:.0f} MB .pt) | {files[stage]['seconds']:.1f} s, peak RSS "
              f"{files[stage]['peak_rss_mb']:.0f} MB (+{extra:.0f} MB over an idle interpreter) | file size "
              f"{files['file_mb']:.0f} MB | {files[stage]['peak_rss_mb'] / files['file_mb']:.2f}× file size |")
    print(f"| load pipeline, peak RSS | {files['load_longclip']['peak_rss_mb']:.0f} MB (Long-CLIP file) | "
          f"{files['load_stock']['peak_rss_mb']:.0f} MB (stock) | "
          f"{files['load_longclip']['peak_rss_mb'] / files['load_stock']['peak_rss_mb']:.2f}× |")


if __name__ == "__main__":
    main()
