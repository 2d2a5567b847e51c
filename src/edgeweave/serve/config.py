"""Typed, frozen settings of the OpenAI-compatible server."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from edgeweave.errors import ConfigError


@dataclass(frozen=True)
class ServeConfig:
    """Limits and access of one server.

    ``api_keys`` empty means no authentication (only sensible on loopback). Limits are what a
    2-core edge box can hold: every active session owns a KV cache sized to its prompt plus
    ``max_tokens``, and the scheduler splits one CPU between all active sessions.
    """

    api_keys: tuple[str, ...] = ()
    max_prompt_tokens: int = 1024
    max_tokens_limit: int = 512  # the most a request may ask for
    default_max_tokens: int = 128  # when the request leaves max_tokens out
    max_concurrent: int = 32  # active sessions; one more gets 429
    default_temperature: float = 1.0  # OpenAI's default when a request leaves it out
    # a request body above this gets 413 before it is read: 1 MiB holds ~180 k tokens of
    # English, far above max_prompt_tokens, while a 20 MB body took 14 s to tokenize
    max_body_bytes: int = 1 << 20
    model_id: str | None = None  # name shown in /v1/models; the backend's name if None
    # /v1/embeddings with the bundled MiniLM when its packages are installed (loaded lazily)
    embeddings: bool = True
    version: int = 1

    def __post_init__(self) -> None:
        object.__setattr__(self, "api_keys", tuple(self.api_keys))
        checks = [
            (self.max_prompt_tokens > 0, "max_prompt_tokens must be > 0"),
            (self.max_tokens_limit > 0, "max_tokens_limit must be > 0"),
            (0 < self.default_max_tokens <= self.max_tokens_limit,
             "default_max_tokens must be in (0, max_tokens_limit]"),
            (self.max_concurrent > 0, "max_concurrent must be > 0"),
            (self.max_body_bytes > 0, "max_body_bytes must be > 0"),
            (self.default_temperature >= 0, "default_temperature must be >= 0"),
            (all(k.strip() for k in self.api_keys), "API keys must be non-empty strings"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ConfigError(f"invalid serve config: {msg}")


def read_api_key_file(path: str | Path) -> tuple[str, ...]:
    """The keys in ``path``, one a line (blank lines and ``#`` comments skipped).

    A file keeps the key out of the command line, where ``ps`` shows it to every user.
    """
    p = Path(path)
    try:
        text = p.read_text()
    except FileNotFoundError:
        raise ConfigError(f"API key file {p} does not exist: write one key per line "
                          "into it") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read API key file {p}: {e}") from None
    keys = tuple(line.strip() for line in text.splitlines()
                 if line.strip() and not line.strip().startswith("#"))
    if not keys:
        raise ConfigError(f"API key file {p} holds no key: write one key per line into it")
    return keys
