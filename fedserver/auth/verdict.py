"""The values auth and policy hooks return: Deny, SoftFail, and the engine's AuthResult."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Deny:
    """An objection to an event: the event is rejected.

    Hooks return ``Deny(reason, rule)``; the engine fills in ``plugin`` with the name the
    objecting hook implementation was registered under, so a plugin cannot claim to be
    another one.

    :ivar reason: a sentence for operators, e.g. ``"sender is banned"``.
    :ivar rule: the rule that denied, as ``"<room version> <number>"`` for spec rules
        (``"v12 5.3.3"``) or any short label a plugin chooses (``"example.org/may_join"``).
    :ivar plugin: the registered name of the plugin that denied (set by the engine).
    """

    reason: str
    rule: str
    plugin: str = ""

    def __init__(self, reason: str, rule: str, plugin: str = "") -> None:
        # What the generated __init__ does (frozen: through the slots, not setattr), in
        # a third less time: state resolution builds thousands of denials.
        _set_deny_reason(self, reason)
        _set_deny_rule(self, rule)
        _set_deny_plugin(self, plugin)


_set_deny_reason = vars(Deny)["reason"].__set__  # the slot's own descriptor
_set_deny_rule = vars(Deny)["rule"].__set__  # the slot's own descriptor
_set_deny_plugin = vars(Deny)["plugin"].__set__  # the slot's own descriptor


@dataclass(frozen=True, slots=True)
class SoftFail:
    """A local policy's objection: the event is soft-failed, never rejected.

    :ivar reason: a sentence for operators.
    :ivar plugin: the registered name of the plugin (set by the caller of the policy hook).
    """

    reason: str
    plugin: str = ""


@dataclass(frozen=True, slots=True)
class AuthResult:
    """The outcome of an authorization check.

    :ivar allowed: ``True`` if no rule denied the event.
    :ivar denials: every :class:`Deny` collected, spec rules first; empty when allowed.
    """

    allowed: bool
    denials: tuple[Deny, ...] = ()

    def __init__(self, allowed: bool, denials: tuple[Deny, ...] = ()) -> None:
        # As Deny's: the generated __init__'s effect, through the slots.
        _set_result_allowed(self, allowed)
        _set_result_denials(self, denials)

    @property
    def rule(self) -> str | None:
        """The rule of the first denial, or ``None`` if allowed."""
        return self.denials[0].rule if self.denials else None

    @property
    def reason(self) -> str | None:
        """The reason of the first denial, or ``None`` if allowed."""
        return self.denials[0].reason if self.denials else None

    @classmethod
    def deny(cls, *denials: Deny) -> "AuthResult":
        """A rejecting result holding ``denials``."""
        return cls(False, tuple(denials))


_set_result_allowed = vars(AuthResult)["allowed"].__set__  # the slot's own descriptor
_set_result_denials = vars(AuthResult)["denials"].__set__  # the slot's own descriptor

#: The (shared, immutable) result for an allowed event.
ALLOWED = AuthResult(True, ())
