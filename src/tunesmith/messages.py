"""An OpenAI-style list of chat messages, checked and normalised: the server's requests and the
workbench's chat both take one.

    from tunesmith.messages import BadMessages, check_messages
    messages = check_messages(body.get("messages"))   # BadMessages(message, param) when malformed
"""

from __future__ import annotations

# OpenAI's roles, and the role each takes in a chat template ("developer" is the newer "system")
ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}


class BadMessages(ValueError):
    """What is wrong, and where: `param` names the field (e.g. messages[2].role)."""

    def __init__(self, message: str, param: str):
        super().__init__(message)
        self.message, self.param = message, param


def check_messages(messages) -> list[dict]:
    """[{role, content}] with roles mapped for the chat template and text-part content joined."""
    if not isinstance(messages, list) or not messages:
        raise BadMessages("`messages` must be a non-empty list of {role, content} objects.", "messages")
    out = []
    for i, m in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise BadMessages(f"{where} must be an object with role and content.", where)
        role = m.get("role")
        if role not in ROLES:
            raise BadMessages(
                f"{where}.role {role!r} is not supported; use one of {', '.join(ROLES)}.", f"{where}.role"
            )
        content = m.get("content")
        if content is None and role == "assistant":
            content = ""
        if isinstance(content, list):  # content parts: text only
            if not all(
                isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str) for p in content
            ):
                raise BadMessages(
                    f'{where}.content: only text parts ({{"type": "text", "text": ...}}) are supported.',
                    f"{where}.content",
                )
            content = "".join(p["text"] for p in content)
        if not isinstance(content, str):
            raise BadMessages(f"{where}.content must be a string.", f"{where}.content")
        out.append({"role": ROLES[role], "content": content})
    return out
