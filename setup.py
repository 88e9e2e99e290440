import sys

from setuptools import setup


def cpu_kernels() -> dict:
    """The C++ CPU kernels (kernels/*.cpp: decode and prefill attention, the KV store,
    RMSNorm and the rotary embedding), compiled
    for AVX-512 at install, so that no process compiles them at its first call; they are loaded
    only on CPUs that have AVX-512. Optional: without torch at build time (pip's build isolation)
    or a compiler, kojudge runs the torch paths instead."""
    try:
        from torch.utils.cpp_extension import BuildExtension, CppExtension
    except ImportError:
        return {}

    class OptionalBuild(BuildExtension):
        def build_extension(self, ext):
            try:
                super().build_extension(ext)
            except Exception as exc:  # noqa: BLE001 - any compiler failure leaves the torch path
                print(f"kojudge: {ext.name} not built ({exc}); the torch paths run instead",
                      file=sys.stderr)

    # A fixed instruction set, not -march=native, so that the library runs on any AVX-512 CPU
    # the checkout moves to. OpenMP is the runtime torch loads. gcc 12 warns of its own
    # intrinsics headers' undefined pass-through vectors: silenced. No contraction of a product
    # and a sum into one FMA: token_ops.cpp rounds where torch's separate operations round.
    flags = ["-O3", "-mavx512f", "-mavx512bw", "-mavx512dq", "-mavx512vl", "-mfma", "-fopenmp",
             "-ffp-contract=off", "-Wno-maybe-uninitialized", "-Wno-uninitialized"]
    sources = ["kernels/cpu_kernels.cpp", "kernels/prefill_attention.cpp", "kernels/token_ops.cpp"]
    kernel = CppExtension("kojudge.kernels._cpu_kernels", sources, extra_compile_args=flags)
    return dict(ext_modules=[kernel], cmdclass={"build_ext": OptionalBuild})


setup(
    name="kojudge",
    version="0.1.0",
    description="A judging engine: LLM judges over many candidate answers, fast, and the trainer for them.",
    python_requires=">=3.10",
    packages=[
        "kojudge", "kojudge.runtime", "kojudge.model", "kojudge.attention", "kojudge.judging",
        "kojudge.app", "kojudge.demo", "kojudge.kernels", "kojudge.train", "kojudge.train.recipes",
    ],
    package_dir={"kojudge": "engine", "kojudge.kernels": "kernels", "kojudge.train": "train"},
    package_data={"kojudge.judging": ["prompts/*.md"], "kojudge.demo": ["judge/*"]},
    install_requires=[
        "torch>=2.5",
        "triton>=3.0",
        "transformers>=4.56",
        "tokenizers>=0.21",
        "jinja2>=3.1.6",
        "safetensors>=0.4",
        "numpy>=1.26",
        "tqdm>=4.66",
        "math-verify>=0.7",
        "pyyaml>=6",
    ],
    extras_require={
        "test": ["pytest>=8", "pytest-benchmark>=4", "hypothesis>=6"],
        "plots": ["matplotlib>=3.8"],
        "gpu": ["flashinfer-python>=0.2.0"],  # plan()/run() API; checked against 0.7.4's source
    },
    entry_points={"console_scripts": ["kojudge=kojudge.app.cli:main"]},
    **cpu_kernels(),
)
