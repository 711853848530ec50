"""Who may write labels: open on a person's own machine, guarded when the app is published.

On a public deployment (a Hugging Face Space, or ``--public``) anyone can call every endpoint,
the import one included, so the app must not trust what a request says about who sent it:

- **local** (the default): anyone who can reach the app writes; the labeller is the typed name.
- **public**: a label is written only by someone logged in with their Hugging Face account
  (Gradio's OAuth, on a Space with ``hf_oauth: true``; the labeller is the account name, whatever
  was typed) or by whoever holds the owner's key (``GSE_OWNER_KEY``, a secret the owner sets).
  Importing and retracting are the owner's: the owner's account (``GSE_OWNER``, or the Space's
  author) or the key. Without a key and without login, a public app is read-only for labels.

The key is compared in constant time (``hmac.compare_digest``). Nothing here depends on Gradio:
the profile is any object with a ``username`` (Gradio's ``OAuthProfile``), or ``None``.
"""

from __future__ import annotations

import hmac
import os
from dataclasses import dataclass
from typing import Any

from explorer.app.inputs import UserError

_TRUE = {"1", "true", "yes", "on"}


@dataclass(frozen=True)
class WritePolicy:
    """Who may write labels, import and retract.

    Args:
        public: the app is published: writes need a login or the owner's key.
        key: the owner's key (``None``: no key; only logged-in accounts may label).
        owner: the owner's Hugging Face account name (may import and retract when logged in).
        login: whether Hugging Face login is offered (a Space with OAuth configured).
    """

    public: bool = False
    key: str | None = None
    owner: str | None = None
    login: bool = False

    @classmethod
    def from_env(cls, public: bool | None = None) -> WritePolicy:
        """The policy for this process: public on a Space (``SPACE_ID`` set), with ``--public``
        or ``GSE_PUBLIC=1``; the key from ``GSE_OWNER_KEY``; the owner from ``GSE_OWNER`` or the
        Space's author; login when the Space has OAuth (``OAUTH_CLIENT_ID`` set)."""
        env = os.environ
        on_space = bool(env.get("SPACE_ID"))
        if public is None:
            public = on_space or env.get("GSE_PUBLIC", "").strip().lower() in _TRUE
        key = env.get("GSE_OWNER_KEY", "").strip() or None
        owner = (env.get("GSE_OWNER") or env.get("SPACE_AUTHOR_NAME") or "").strip() or None
        return cls(
            public=public, key=key, owner=owner, login=on_space and bool(env.get("OAUTH_CLIENT_ID"))
        )

    def describe(self) -> str:
        """One line for the page: who may write here."""
        if not self.public:
            return "Labels: anyone using this app may write (local mode)."
        ways = []
        if self.login:
            ways.append("log in with Hugging Face")
        if self.key:
            ways.append("enter the owner's key")
        if not ways:
            return "Labels are read-only here (public mode, no login and no owner key set)."
        return "Labels: to save one, " + " or ".join(ways) + "; import and retract are the owner's."

    def _key_ok(self, key: Any) -> bool:
        if not self.key or not isinstance(key, str) or not key:
            return False
        return hmac.compare_digest(key.encode("utf-8", "replace"), self.key.encode("utf-8"))

    @staticmethod
    def _account(profile: Any) -> str | None:
        name = getattr(profile, "username", None) if profile is not None else None
        return name if isinstance(name, str) and name else None

    def labeller(self, typed: Any, profile: Any = None, key: Any = "") -> str:
        """The name a label is saved under, or :class:`UserError` if this request may not write.

        Local: the typed name. Public: the logged-in account (the typed name is ignored: anyone
        can type anything), else the typed name with the owner's key, else refused.
        """
        name = typed if isinstance(typed, str) else ""
        if not self.public:
            return name
        account = self._account(profile)
        if account is not None:
            return account
        if self._key_ok(key):
            return name or "owner"
        raise UserError(self._refusal("save a label"))

    def check_owner(self, profile: Any = None, key: Any = "") -> None:
        """Pass for the owner (local use, their account, or the key); else :class:`UserError`."""
        if not self.public or self._key_ok(key):
            return
        account = self._account(profile)
        if account is not None and self.owner is not None and account == self.owner:
            return
        raise UserError(self._refusal("import or retract labels") + " (the owner only)")

    def _refusal(self, what: str) -> str:
        if self.login and self.key:
            how = "log in with Hugging Face or enter the owner's key"
        elif self.login:
            how = "log in with Hugging Face"
        elif self.key:
            how = "enter the owner's key"
        else:
            return f"this public app is read-only: it cannot {what}"
        return f"this app is public: to {what}, {how}"
