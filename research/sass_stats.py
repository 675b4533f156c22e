"""Static profile of the fused Triton kernel, compiled for a GPU this machine need not have.

Triton compiles ahead of time for any CUDA target (its wheel ships ptxas, cuobjdump and nvdisasm),
so the machine code of the fused distort + SSIM kernel can be inspected without a GPU:

    python research/sass_stats.py                       # sm_90 (H100 / H200), every preset, every config
    python research/sass_stats.py --arch 90 --preset fused --write   # also bench/results/sass-*.md

For each (preset, configuration) it reports what ptxas allocated (registers per thread, stack bytes:
spilled registers live there) and the instruction mix of the SASS: tensor-core MMAs, shared-memory
traffic (layout conversions between the dots), barriers, local-memory spill loads and stores,
special-function (MUFU) ops, and the total. These are static counts of the code, not run times: they
say where registers spill and how much work a configuration issues, and they guide which candidates
are worth a GPU's time (bench/gpu_bench.py measures those; research/triton-tuning.md reads the two
side by side). Note the toolchain: the counts come from the Triton installed here, which may differ
from the GPU machine's. tests/kernels/test_codegen.py checks what the tuning note claims on these rows.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PRESETS = {
    # name: the kernel's mode constexprs for one 32 x 32 image per tile (CIFAR-10)
    "fused": dict(BLUR=True, NOISE=True, SCORE=True, READ_Y=False),
    "blur_ssim": dict(BLUR=True, NOISE=False, SCORE=True, READ_Y=False),
    "noise_ssim": dict(BLUR=False, NOISE=True, SCORE=True, READ_Y=False),
    "score_only": dict(BLUR=False, NOISE=False, SCORE=True, READ_Y=True),
    "distort_only": dict(BLUR=True, NOISE=True, SCORE=False, READ_Y=False),
}

CONFIGS = {
    # name: launch options (num_warps, maxnreg: 0 = no cap) and constexprs (ISOLATE, STACK: False unless given)
    "default": {},  # the launcher's defaults, whatever they are
    "chained_w4_r168": dict(num_warps=4, maxnreg=168),  # the chained dots, as timed on the H200
    "w4": dict(num_warps=4, maxnreg=0),
    "w2": dict(num_warps=2, maxnreg=0),
    "w2_r168": dict(num_warps=2, maxnreg=168),
    "w8": dict(num_warps=8, maxnreg=0),
    "iso_w4_r168": dict(ISOLATE=True, num_warps=4, maxnreg=168),
    "iso_w4_r128": dict(ISOLATE=True, num_warps=4, maxnreg=128),
    "iso_w4": dict(ISOLATE=True, num_warps=4, maxnreg=0),
    "iso_w8_r128": dict(ISOLATE=True, num_warps=8, maxnreg=128),
    "iso_w8_r80": dict(ISOLATE=True, num_warps=8, maxnreg=80),
    "stack_w4_r168": dict(STACK=True, num_warps=4, maxnreg=168),
    "stack_w4": dict(STACK=True, num_warps=4, maxnreg=0),
    "stack_iso_w4_r168": dict(STACK=True, ISOLATE=True, num_warps=4, maxnreg=168),
    "stack_iso_w8_r128": dict(STACK=True, ISOLATE=True, num_warps=8, maxnreg=128),
    "stack_iso_w4_r128": dict(STACK=True, ISOLATE=True, num_warps=4, maxnreg=128),
}
for _name, _cfg in CONFIGS.items():  # named configurations mean what they say whatever the launcher's defaults
    if _name != "default":
        _cfg.setdefault("ISOLATE", False)
        _cfg.setdefault("STACK", False)

OPCLASSES = {
    "mma": ("HMMA", "HGMMA", "IMMA"),
    "wgmma": ("HGMMA",),
    "shared_ld": ("LDS", "LDSM"),
    "shared_st": ("STS", "STSM"),
    "barrier": ("BAR",),
    "spill_ld": ("LDL",),
    "spill_st": ("STL",),
    "global": ("LDG", "STG"),
    "mufu": ("MUFU",),
    "int_mul": ("IMAD",),
}


def _bin(name: str) -> str:
    import triton

    return str(Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / name)


def kernel_module():
    """iqals_fast/kernels/distort_and_score.py of this checkout, loaded under a private name: its @triton.jit
    kernel is defined now, compiled (not interpreted) whatever TRITON_INTERPRET was when iqals_fast.kernels
    loaded."""
    import importlib.util

    name = "_iqals_sass_distort_and_score"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, ROOT / "iqals_fast" / "kernels" / "distort_and_score.py")
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod  # before it runs: its dataclass looks its module up
        saved = os.environ.pop("TRITON_INTERPRET", None)
        try:
            spec.loader.exec_module(mod)
        except BaseException:
            del sys.modules[name]
            raise
        finally:
            if saved is not None:
                os.environ["TRITON_INTERPRET"] = saved
    return sys.modules[name]


def compile_kernel(mode: dict, config: dict, arch: int):
    """Compile distort_and_score_kernel for sm_<arch> with the 32 x 32 single-tile constexprs; the cubin."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    kds = kernel_module()
    k = kds.distort_and_score_kernel
    sig = dict(x_ptr="*u8", y_ptr="*u8", out_ptr="*u8", ids_ptr="*i64", blur_taps_ptr="*fp32",
               win_taps_ptr="*fp32", score_ptr="*fp32", shift_ptr="*fp32", N="i32", H="i32", W="i32", seed="i64",
               noise_scale="fp32", n_tiles_h="i32", n_tiles_w="i32", c1="fp32", c2="fp32",
               blur_scale="fp32", win_scale="fp32", R="i32", one="i32")
    extra = {k_: v for k_, v in config.items() if k_.isupper()}
    const = dict(WIN=11, PDH=32, PDW=32, PIH=32, PIW=32, TSH=32, TSW=32, SAME_TILE=True, SINGLE_TILE=True,
                 DOT=kds.DOT_MODES[kds.DEFAULT.dot], ISOLATE=kds.DEFAULT.isolate_dots, STACK=kds.DEFAULT.stack_moments,
                 **mode)
    const.update(extra)
    missing = [a for a in k.arg_names if a not in sig and a not in const]
    if missing:
        raise SystemExit(f"sass_stats.py does not know the kernel arguments {missing}: update its signature")
    for name in const:
        sig[name] = "constexpr"
    src = ASTSource(fn=k, signature=sig, constexprs={(k.arg_names.index(n),): v for n, v in const.items()})
    maxnreg = config["maxnreg"] if "maxnreg" in config else kds.DEFAULT.maxnreg
    opts = dict(num_warps=config.get("num_warps", kds.DEFAULT.num_warps))
    if maxnreg:
        opts["maxnreg"] = int(maxnreg)
    return triton.compile(src, target=GPUTarget("cuda", arch, 32), options=opts)


def mma_warps(ttgir: str) -> str:
    """The warps layouts of the kernel's MMA encodings, e.g. "[4, 1]" or "[2, 2]"."""
    found = sorted(set(re.findall(r"nvidia_mma<\{[^}]*warpsPerCTA = (\[[0-9, ]*\])", ttgir)))
    return " ".join(found)


def sass_profile(cubin: bytes) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "k.cubin")
        Path(path).write_bytes(cubin)
        usage = subprocess.run([_bin("cuobjdump"), "--dump-resource-usage", path], check=True,
                               capture_output=True, text=True).stdout
        sass = subprocess.run([_bin("nvdisasm"), "-c", path], check=True, capture_output=True, text=True).stdout
    res = {k: int(v) for k, v in re.findall(r"\b(REG|STACK|SHARED|LOCAL):(\d+)", usage)}
    code, labels = [], {}  # (opcode, operands, predicated) in order; label -> index of the next instruction
    for line in sass.splitlines():
        if m := re.match(r"\s*(\.L_x_\d+):", line):
            labels[m.group(1)] = len(code)
        elif m := re.match(r"\s*/\*[0-9a-f]+\*/\s+(@!?U?P\w+\s+)?([A-Z][A-Z0-9]*)(.*)", line):
            code.append((m.group(2), m.group(3), m.group(1) is not None))
    ops = collections.Counter(op for op, _, _ in code)

    def target(i):  # index a branch at i goes to, or None
        t = re.search(r"\((\.L_x_\d+)\)", code[i][1]) if code[i][0] == "BRA" else None
        return labels.get(t.group(1)) if t else None

    backward = [(target(i), i) for i in range(len(code)) if target(i) is not None and target(i) <= i]
    # cold code: what a conditional forward branch skips when the skipped part holds a loop and no MMA or
    # barrier (libdevice's slow paths, e.g. cosf's Payne-Hanek reduction for |x| > 105615)
    sync = OPCLASSES["mma"] + OPCLASSES["barrier"]
    cold = set()
    for i in range(len(code)):
        t = target(i)
        if (code[i][2] and t is not None and t > i and any(i < a and b < t for a, b in backward)
                and not any(code[j][0] in sync for j in range(i + 1, t))):
            cold.update(range(i + 1, t))
    out = {"registers": res.get("REG"), "stack_bytes": res.get("STACK"), "shared_bytes": res.get("SHARED"),
           "instructions": len(code)}
    for cls, names in OPCLASSES.items():
        out[cls] = sum(ops[n] for n in names)
    out["cold_instructions"] = len(cold)
    # the hot loop: the innermost loop (a backward branch) with MMAs in it, i.e. the channel loop's body,
    # without its cold code
    loops = [collections.Counter(code[j][0] for j in range(a, b + 1) if j not in cold) for a, b in backward]
    loops = [c for c in loops if any(c[n] for n in OPCLASSES["mma"])]
    if loops:
        body = min(loops, key=lambda c: sum(c.values()))
        out["loop_instructions"] = sum(body.values())
        out["loop_barriers"] = sum(body[n] for n in OPCLASSES["barrier"])
        out["loop_spills"] = sum(body[n] for n in OPCLASSES["spill_ld"] + OPCLASSES["spill_st"])
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", type=int, default=90, help="CUDA compute capability x 10 (90: H100/H200)")
    p.add_argument("--preset", action="append", choices=sorted(PRESETS), help="modes (default: all)")
    p.add_argument("--config", action="append", choices=sorted(CONFIGS), help="configurations (default: all)")
    p.add_argument("--write", action="store_true", help="write bench/results/sass-sm<arch>.{json,md}")
    args = p.parse_args(argv)
    import triton

    kds = kernel_module()
    rows = []
    for preset in args.preset or list(PRESETS):
        for cname in args.config or list(CONFIGS):
            ck = compile_kernel(PRESETS[preset], CONFIGS[cname], args.arch)
            prof = sass_profile(ck.asm["cubin"])
            nw = CONFIGS[cname].get("num_warps", kds.DEFAULT.num_warps)
            regs = prof["registers"]
            smem = int(ck.metadata.shared)  # bytes of shared memory per program (Triton's staging)
            fit = min(65536 // (32 * nw * (-(-regs // 8) * 8)), (227 * 1024) // max(smem, 1))  # H100/H200 SM
            rows.append({"preset": preset, "config": cname, "num_warps": nw, "mma_warps": mma_warps(ck.asm["ttgir"]),
                         **prof, "smem_bytes": smem, "programs_per_sm": fit,
                         "warp_instructions": nw * prof["instructions"],
                         "image_warp_instructions": 3 * nw * prof.get("loop_instructions", 0)})
            print(json.dumps(rows[-1]), flush=True)
    cols = ["num_warps", "mma_warps", "registers", "stack_bytes", "smem_bytes", "programs_per_sm",
            "loop_instructions", "image_warp_instructions", "loop_barriers", "loop_spills", "instructions",
            "cold_instructions", "mma",
            "shared_ld", "shared_st", "barrier", "spill_ld", "spill_st", "mufu", "int_mul"]
    lines = [f"# Static SASS profile of the fused kernel, sm_{args.arch}",
             "",
             f"`python research/sass_stats.py --arch {args.arch}`: triton {triton.__version__} compiling ahead of "
             f"time on {platform.machine()} (no GPU), 32 x 32 images, one tile. Defaults: dot={kds.DEFAULT.dot}, "
             f"num_warps={kds.DEFAULT.num_warps}, maxnreg={kds.DEFAULT.maxnreg}. Counts are instructions in the code "
             "(static), not executed; stack bytes hold spilled registers. loop_*: the channel loop's body (the innermost "
             "loop with MMAs) less its cold code (slow paths skipped by a branch, such as cosf's reduction of "
             "huge arguments: cold_instructions in the whole kernel), which each warp runs 3 times per image; "
             "image_warp_instructions: 3 x that x the "
             "warps of a program, the issue cost of one image; instructions and the columns after it: the whole "
             "kernel, prologue and rarely taken paths included; smem_bytes: Triton's shared memory per program; "
             "programs_per_sm: how many fit "
             "the 65,536 registers and 227 KB of shared memory of an SM; mma_warps: how the MMA layouts "
             "spread the warps (rows, columns).",
             "",
             "| preset | config | " + " | ".join(cols) + " |",
             "|---|---|" + "---:|" * len(cols)]
    for r in rows:
        lines.append(f"| {r['preset']} | {r['config']} | " + " | ".join(str(r[c]) for c in cols) + " |")
    lines += ["", "What the rows say about the warps layout and the candidates: the \"Warps\" section of "
              "research/triton-tuning.md. Run times of the same configurations on a GPU: bench/gpu_bench.py "
              "(the kernel's CANDIDATES)."]
    print("\n".join(lines))
    if args.write:
        out = ROOT / "bench" / "results" / f"sass-sm{args.arch}-triton{triton.__version__}"
        out.with_suffix(".json").write_text(json.dumps({"triton": triton.__version__, "arch": args.arch,
                                                        "rows": rows}, indent=1) + "\n")
        out.with_suffix(".md").write_text("\n".join(lines) + "\n")
        print("wrote", out.with_suffix(".md"))


if __name__ == "__main__":
    main()
