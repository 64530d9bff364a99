"""The form is the contract: what a workbench user may set, and what every job's config must hold
before it runs. A signed-in user is trusted with their projects, not with the server: a job reads
and writes only inside its project, loads no code shipped with a model, sends no secret of the
server's anywhere and calls only the endpoints the server's owner allowed (`tunesmith ui --allow-url`).
An owner who needs more (trust_remote_code, data elsewhere) uses the CLI.

    overrides = form_overrides(form, current)          # UserError for a key the form does not show
    check_job_config(cfg, folder, policy)              # UserError naming the key and the fix
    redact(text, root, folder)                         # server paths out of a message or log
"""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path

from tunesmith import UserError

# The advanced training form: these sections and data keys, less what the workbench sets itself
# (where the run goes) and what only the CLI may set (running a model's own code).
FORM_SECTIONS = ("model", "train", "lora")
FORM_DATA_KEYS = ("data.max_len", "data.too_long", "data.heldout_fraction", "data.seed")
NOT_ON_FORM = ("train.output_dir", "model.trust_remote_code")
# The compare form: how many examples and how long the replies; a judge only from the allow-list.
COMPARE_DEFAULTS = {"compare.max_examples": "20", "generate.max_new_tokens": "128", "generate.temperature": "0"}
JUDGE_KEYS = ("judge.url", "judge.model")
# Config fields that name files or folders (with any field whose name ends in _file or _dir): each
# must resolve inside the project.
PATH_KEYS = (
    "data.train",
    "data.heldout",
    "data.corpus",
    "data.glossary",
    "data.style",
    "data.prompt",
    "train.output_dir",
    "train.init_from",
    "compare.output_dir",
    "compare.against_run",
)


@dataclasses.dataclass
class Policy:
    """What the server's owner allows a workbench job."""

    default_model: str  # the model the owner started the workbench with: allowed wherever it lives
    allowed_urls: tuple[str, ...] = ()  # judge and teacher endpoints (`tunesmith ui --allow-url`)
    secret_envs: tuple[str, ...] = ("TUNESMITH_API_KEY",)  # environment variables no job may read


def form_keys() -> list[str]:
    from tunesmith.config import field_docs

    return [
        k
        for k, _, _, _ in field_docs()
        if (k.split(".")[0] in FORM_SECTIONS or k in FORM_DATA_KEYS) and k not in NOT_ON_FORM
    ]


def form_value(value, root: Path, folder: Path) -> str:
    """A config value as the form shows it: booleans as true/false, no server path outside the project."""
    return redact(str(value).lower() if isinstance(value, bool) else str(value), root, folder)


def form_overrides(form: dict, current: dict, shown: list[str]) -> list[str]:
    """`key=value` for each `cfg.KEY` field that differs from what the form showed (`current`, as
    form_value wrote it). A key the form does not show is refused, not ignored: a request that sends
    one was not made by the form."""
    out = []
    for field, value in form.items():
        if not field.startswith("cfg."):
            continue
        key = field[4:]
        if key not in shown:
            raise UserError(
                f"{key}: not a setting the workbench offers (it offers {', '.join(FORM_SECTIONS)} and "
                f"{', '.join(FORM_DATA_KEYS)}). fix: set it in the project's files, or run the CLI."
            )
        if any(ord(ch) < 32 and ch not in "\t\n\r" for ch in str(value)):
            # a NUL or another control character is never part of a setting, and a path with a NUL
            # makes the operating system's calls fail instead of answering
            raise UserError(f"{key}: the value holds a control character. fix: type the value again.")
        if str(value) != current[key]:
            out.append(f"{key}={value}")
    return out


def compare_overrides(form: dict, policy: Policy) -> list[str]:
    """The compare form's keys (its defaults where not sent); a judge URL only from the allow-list."""
    allowed = (*COMPARE_DEFAULTS, *JUDGE_KEYS, "csrf_token")
    extra = [k for k in form if k not in allowed]
    if extra:
        raise UserError(f"{extra[0]}: not a setting the compare form offers ({', '.join(allowed[:-1])}).")
    out = [f"{k}={form.get(k, v)}" for k, v in COMPARE_DEFAULTS.items()]
    return out + [f"{k}={form[k]}" for k in JUDGE_KEYS if form.get(k)]


def path_keys(cfg) -> list[str]:
    named = [
        f"{sec.name}.{f.name}"
        for sec in dataclasses.fields(cfg)
        for f in dataclasses.fields(getattr(cfg, sec.name))
        if f.name.endswith(("_file", "_dir"))
    ]
    return list(dict.fromkeys([*PATH_KEYS, *named]))


def inside(value: str, folder: Path) -> bool:
    path = Path(value).expanduser()
    path = path if path.is_absolute() else folder / path
    try:
        return path.resolve().is_relative_to(folder.resolve())
    except (ValueError, OSError):  # a NUL in the name, a name too long: no path the job could use
        return False


def check_job_config(cfg, folder: Path, policy: Policy) -> None:
    """Refuse a job config that would reach outside the project or past the owner's allow-lists."""
    from tunesmith.models import EMBEDDED

    if cfg.model.trust_remote_code:
        raise UserError(
            "model.trust_remote_code: the workbench never runs code shipped with a model. fix: train "
            "such a model with the CLI (tunesmith train), where you decide to trust it."
        )
    for key in path_keys(cfg):
        section, name = key.split(".")
        value = getattr(getattr(cfg, section), name)
        if value and not inside(value, folder):
            raise UserError(f"{key}: '{Path(value).name}' is outside the project; a job reads and writes only there.")
    model = cfg.model.name
    local = model.startswith(("/", ".", "~")) or (folder / model).exists() or Path(model).expanduser().exists()
    if model != policy.default_model and model not in EMBEDDED and local and not inside(model, folder):
        raise UserError(
            f"model.name: '{Path(model).name}' is a folder outside the project. fix: the workbench's own model "
            f"({policy.default_model}), an embedded one ({', '.join(EMBEDDED)}), or a hub id."
        )
    for section in dataclasses.fields(cfg):
        for f in dataclasses.fields(getattr(cfg, section.name)):
            value = getattr(getattr(cfg, section.name), f.name)
            key = f"{section.name}.{f.name}"
            if (f.name == "url" or f.name.endswith("_url")) and value and value not in policy.allowed_urls:
                allowed = ", ".join(policy.allowed_urls) or "none"
                raise UserError(
                    f"{key}: {value} is not an endpoint this workbench may call (allowed: {allowed}). "
                    f"fix: the server's owner adds it with `tunesmith ui --allow-url URL`."
                )
            if (
                f.name.endswith("api_key_env")
                and value
                and (value in policy.secret_envs or value.startswith("TUNESMITH_"))
            ):
                raise UserError(f"{key}: {value} holds a secret of this server's; name the endpoint's own key.")


_ABSOLUTE = re.compile(r"(?<![\w.:/~-])/(?:[^\s/'\"(),:;<>`]+/)+[^\s/'\"(),:;<>`]*")


def redact(text: str, root: Path, folder: Path | None = None) -> str:
    """`text` without server paths: the project's own relative to it, PROJECTS_DIR by name, any other
    absolute path as …/its-last-part."""
    if folder is not None:
        text = text.replace(str(folder) + os.sep, "").replace(str(folder), ".")
    text = text.replace(str(root), "PROJECTS_DIR")
    return _ABSOLUTE.sub(lambda m: "…/" + m.group(0).rstrip("/").rsplit("/", 1)[-1], text)


def redact_upload(text: str, root: Path) -> str:
    """An upload's error with the paths of the upload named as inside it (`research/notes.md`)."""
    from tunesmith.workbench.projects import projects_root

    base = re.escape(str(projects_root(root)))
    text = re.sub(base + r"/[a-z0-9-]+/source/?(?=[^\s]|$)", "", text)
    text = re.sub(base + r"/[a-z0-9-]+/", "", text)
    return redact(text, root)
