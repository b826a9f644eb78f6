"""Turn what the user typed after `--model` into an Architecture, without downloading anything."""

from __future__ import annotations

from pathlib import Path

from quantbench.errors import QuantbenchError
from quantbench.planner.config import Architecture, architecture_from_config, read_config_file
from quantbench.planner.presets import PRESETS, find_preset, preset


def _cached_hub_config(repo_id: str) -> Path | None:
    from huggingface_hub import try_to_load_from_cache

    # Returns a path when cached, None when unknown, a sentinel when cached as "does not exist".
    found = try_to_load_from_cache(repo_id, "config.json")
    return Path(found) if isinstance(found, str) else None


def load_architecture(ref: str) -> tuple[Architecture, str]:
    """(architecture, where it came from) for a preset name, a model directory or config.json,
    `embedded:NAME`, or a hub id found in the local Hugging Face cache (else its bundled preset)."""
    text = ref.strip()
    if text.startswith("embedded:"):
        from quantbench import models  # imports torch: only for embedded models, which are GGUF
        from quantbench.spec import ModelRef

        path = models.resolve(ModelRef(text)).path
        return architecture_from_config(read_config_file(path), text, f"{path}/config.json"), "embedded model"
    path = Path(text).expanduser()
    if path.exists():
        return architecture_from_config(read_config_file(path), path.name or text, str(path)), str(path)
    key = find_preset(text)
    if "/" in text:
        cached = _cached_hub_config(text)
        if cached is not None:
            return architecture_from_config(read_config_file(cached), text, str(cached)), "Hugging Face cache"
        if key is not None:
            return preset(key), f"bundled preset {key} (not in the local Hugging Face cache)"
    elif key is not None:
        return preset(key), f"bundled preset {key}"
    raise QuantbenchError(
        f"model {text!r}: not a preset ({', '.join(PRESETS)}), not an existing path, "
        "and not a hub id whose config.json is in the local Hugging Face cache"
    )
