"""Apply a StaticQuantConfig to a model's ops with INC semantics: which ops are quantized, how, and why.

Rules, in order of strength (ARCHITECTURE.md §4 step 2): the global config, then type rules, then name rules; among
rules of one kind the later entry wins. `set_local` configs are full configs and replace what came before; 2.x
`op_type_dict`/`op_name_dict` entries override only the items they give (and match with `re.fullmatch`).

How a `set_local` key is classified (INC's ONNX rule, extended to torch class names):
  * a class or function (`torch.nn.Linear`) is an op type, matched by its `__name__`;
  * a string is an op type when it is an ONNX op type (any domain `onnx.defs` knows), a `torch.nn` module class
    name, a module class or op type present in the model, or one of `known_op_types`; it then matches an op's
    `op_type` or the class name of its `module_type` exactly;
  * any other string is a name regex, tried with `re.match` (anchored at the start only) on the op's module path
    and on its node name.
Classification is exclusive: INC's torch backend also tries a string type key as a name regex; here a string is
one or the other, as in INC's ONNX backend.
A name key that looks like a type (`Convv`: an identifier starting with an uppercase letter) and matches no op name
is an error with suggestions, not a silent no-op; any other rule that matches no op is a `ConfigWarning`.
"""

from __future__ import annotations

import functools
import re
import warnings
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from quantir.compiler.config.quant_config import (
    FLOAT_DTYPES,
    QUANT_DTYPES,
    ConfigWarning,
    LocalKey,
    StaticQuantConfig,
    check_combination,
    compile_key,
    local_key_label,
    local_key_text,
    nearest,
)
from quantir.ir.core import Node
from quantir.ir.dtypes import DType
from quantir.ir.errors import ConfigError
from quantir.ir.types import Granularity, GranularityKind, QuantSpec, Scheme

__all__ = [
    "FieldResolution", "LocalConfigurable", "OpRef", "QuantRequest", "ResolvedOpConfig", "TORCH_MODULE_TYPES",
    "onnx_op_types", "op_ref", "resolve_fields", "resolve_op_configs",
]  # fmt: skip

TORCH_MODULE_TYPES = frozenset(
    """AdaptiveAvgPool1d AdaptiveAvgPool2d AdaptiveAvgPool3d AdaptiveLogSoftmaxWithLoss AdaptiveMaxPool1d
    AdaptiveMaxPool2d AdaptiveMaxPool3d AlphaDropout AvgPool1d AvgPool2d AvgPool3d BatchNorm1d BatchNorm2d BatchNorm3d
    Bilinear CELU ChannelShuffle CircularPad1d CircularPad2d CircularPad3d ConstantPad1d ConstantPad2d ConstantPad3d
    Conv1d Conv2d Conv3d ConvTranspose1d ConvTranspose2d ConvTranspose3d CosineSimilarity CrossMapLRN2d Dropout
    Dropout1d Dropout2d Dropout3d ELU Embedding EmbeddingBag FeatureAlphaDropout Flatten Fold FractionalMaxPool2d
    FractionalMaxPool3d GELU GLU GRU GRUCell GroupNorm Hardshrink Hardsigmoid Hardswish Hardtanh Identity
    InstanceNorm1d InstanceNorm2d InstanceNorm3d LPPool1d LPPool2d LPPool3d LSTM LSTMCell LayerNorm LazyBatchNorm1d
    LazyBatchNorm2d LazyBatchNorm3d LazyConv1d LazyConv2d LazyConv3d LazyConvTranspose1d LazyConvTranspose2d
    LazyConvTranspose3d LazyInstanceNorm1d LazyInstanceNorm2d LazyInstanceNorm3d LazyLinear LeakyReLU Linear
    LocalResponseNorm LogSigmoid LogSoftmax MaxPool1d MaxPool2d MaxPool3d MaxUnpool1d MaxUnpool2d MaxUnpool3d Mish
    MultiheadAttention PReLU PairwiseDistance PixelShuffle PixelUnshuffle RMSNorm RNN RNNCell RReLU ReLU ReLU6
    ReflectionPad1d ReflectionPad2d ReflectionPad3d ReplicationPad1d ReplicationPad2d ReplicationPad3d SELU SiLU
    Sigmoid Softmax Softmax2d Softmin Softplus Softshrink Softsign SyncBatchNorm Tanh Tanhshrink Threshold Transformer
    TransformerDecoder TransformerDecoderLayer TransformerEncoder TransformerEncoderLayer Unflatten Unfold Upsample
    UpsamplingBilinear2d UpsamplingNearest2d ZeroPad1d ZeroPad2d ZeroPad3d""".split()  # noqa: SIM905 (a word list)
)
"""The inference-relevant classes of `torch.nn.modules` (torch 2.13), so type keys resolve without importing torch."""

_TYPE_SHAPED = re.compile(r"[A-Z][A-Za-z0-9_]*")


@functools.cache
def onnx_op_types() -> frozenset[str]:
    """Every op type `onnx.defs` has a schema for (all domains, all versions)."""
    import onnx.defs  # imported on first use: onnx is slow to import and most callers never need the list

    return frozenset(s.name for s in onnx.defs.get_all_schemas_with_history())


class LocalConfigurable(Protocol):
    """A config with INC's per-op rules: `set_local` entries and the 2.x `op_name_dict`/`op_type_dict`."""

    op_name_dict: dict[str, Any]
    op_type_dict: dict[str, Any]

    @property
    def local_config(self) -> Mapping[LocalKey, Any]: ...

    def per_op_fields(self) -> dict[str, Any]: ...

    def op_dict_fields(self, dict_name: str, key: object, entry: object) -> dict[str, Any]: ...

    def validate(self) -> None: ...


@dataclass(frozen=True, slots=True)
class OpRef:
    """What resolution needs to know of one op: `key` is the caller's handle (returned untouched), `name` the ONNX
    node name, `module_path`/`module_type` the torch provenance (`"fc1"`, `"torch.nn.modules.linear.Linear"`)."""

    key: object
    op_type: str
    name: str
    module_path: str | None = None
    module_type: str | None = None

    @property
    def module_class(self) -> str | None:
        """The class name of `module_type` (`Linear`), which type keys match."""
        return self.module_type.rsplit(".", 1)[-1] if self.module_type else None


def op_ref(node: Node, index: int) -> OpRef:
    """The OpRef of an IR node (`index` is the caller's handle): its op type, name and torch provenance."""
    src = node.source
    return OpRef(index, node.op_type, node.name, src.module if src else None, src.module_type if src else None)


@dataclass(frozen=True, slots=True)
class QuantRequest:
    """How the user asked one tensor of an op to be quantized; the op's axis completes it into a QuantSpec."""

    dtype: DType
    scheme: Scheme
    granularity: GranularityKind
    observer: str

    def spec(self, axis: int | None = None) -> QuantSpec:
        """The QuantSpec for this tensor; `axis` (the channel axis, from the op traits) is needed for per_channel."""
        if self.granularity is GranularityKind.PER_CHANNEL:
            if axis is None:
                raise ValueError("per_channel quantization needs the tensor's channel axis")
            return QuantSpec(self.dtype, self.scheme, Granularity.per_channel(axis), self.observer)
        return QuantSpec(self.dtype, self.scheme, Granularity.per_tensor(), self.observer)


@dataclass(frozen=True, slots=True)
class ResolvedOpConfig:
    """The decision for one op. `weight` applies to the inputs the op traits mark as weights (none for Relu);
    `fallback_dtype` is the float precision an op that is not quantized runs in; `reason` says why, in user terms."""

    op: OpRef
    weight: QuantRequest | None
    activation: QuantRequest | None
    reason: str
    reduce_range: bool | None = None
    percentile: float = 99.999
    fallback_dtype: DType | None = None

    @property
    def quantize(self) -> bool:
        return self.weight is not None or self.activation is not None

    def weight_spec(self, axis: int) -> QuantSpec | None:
        return None if self.weight is None else self.weight.spec(axis)

    def activation_spec(self, axis: int | None = None) -> QuantSpec | None:
        return None if self.activation is None else self.activation.spec(axis)


# ---- rules ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Rule:
    label: str  # how the user wrote it: set_local('fc1'), op_type_dict['Conv']
    by_type: bool
    pattern: re.Pattern[str]
    fullmatch: bool
    full: bool  # a full config replaces everything before it; a 2.x entry overrides only its items
    fields: Mapping[str, object] = field(hash=False)

    def matches(self, op: OpRef) -> bool:
        test = self.pattern.fullmatch if self.fullmatch else self.pattern.match
        subjects = (op.op_type, op.module_class) if self.by_type else (op.module_path, op.name)
        return any(s and test(s) is not None for s in subjects)


def _type_rule(label: str, text: str, fields: Mapping[str, object]) -> _Rule:
    return _Rule(label, True, re.compile(re.escape(text)), True, True, fields)


def _local_rule(key: LocalKey, cfg: LocalConfigurable, ops: Sequence[OpRef], vocab: Collection[str]) -> _Rule:
    label, text, fields = f"set_local({local_key_label(key)})", local_key_text(key), cfg.per_op_fields()
    if not isinstance(key, str) or key in vocab:
        return _type_rule(label, text, fields)
    rule = _Rule(label, False, compile_key(key, f"set_local key {key!r}"), False, True, fields)
    if _TYPE_SHAPED.fullmatch(key) and not any(rule.matches(op) for op in ops):
        raise _unknown_type(f"set_local key {key!r}", key, ops, vocab, " and matches no op name")
    return rule


def _op_dict_rules(cfg: LocalConfigurable, dict_name: str, ops: Sequence[OpRef], vocab: Collection[str]) -> list[_Rule]:
    by_type = dict_name == "op_type_dict"
    rules = []
    for key, entry in getattr(cfg, dict_name).items():
        if by_type and _TYPE_SHAPED.fullmatch(key) and key not in vocab:
            raise _unknown_type(f"op_type_dict key {key!r}", key, ops, vocab, "")
        pattern = compile_key(key, f"{dict_name} key {key!r}")
        rules.append(
            _Rule(f"{dict_name}[{key!r}]", by_type, pattern, True, False, cfg.op_dict_fields(dict_name, key, entry))
        )
    return rules


def _build_rules(cfg: LocalConfigurable, ops: Sequence[OpRef], vocab: Collection[str]) -> list[_Rule]:
    """Type rules, then name rules (name beats type); within each, 2.x dicts first, then set_local in order."""
    local = [_local_rule(key, c, ops, vocab) for key, c in cfg.local_config.items()]
    types = _op_dict_rules(cfg, "op_type_dict", ops, vocab) + [r for r in local if r.by_type]
    names = _op_dict_rules(cfg, "op_name_dict", ops, vocab) + [r for r in local if not r.by_type]
    return types + names


def _model_types(ops: Sequence[OpRef]) -> set[str]:
    return {t for op in ops for t in (op.op_type, op.module_class) if t}


def _unknown_type(what: str, key: str, ops: Sequence[OpRef], vocab: Collection[str], extra: str) -> ConfigError:
    present = sorted(_model_types(ops))
    close = nearest(key, present, cutoff=0.5)
    close += [c for c in nearest(key, vocab) if c not in close]
    hint = (
        "did you mean " + ", ".join(map(repr, close[:3])) + "?"
        if close
        else "op types in the model: " + ", ".join(present)
    )
    return ConfigError(
        f"{what} is not a known op type (ONNX op types, torch.nn module classes and the module classes in this "
        f"model){extra}; {hint}"
    )


# ---- decisions -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Decision:
    weight: QuantRequest | None
    activation: QuantRequest | None
    reason: str
    reduce_range: bool | None
    percentile: float
    fallback_dtype: DType | None


def _request(side: str, f: Mapping[str, object]) -> QuantRequest | None:
    dtype = str(f[f"{side}_dtype"])
    if dtype in FLOAT_DTYPES:
        return None
    scheme = Scheme.SYM if f[f"{side}_sym"] else Scheme.ASYM
    return QuantRequest(QUANT_DTYPES[dtype], scheme, GranularityKind(f[f"{side}_granularity"]), str(f[f"{side}_algo"]))


def _side_text(side: str, f: Mapping[str, object]) -> str:
    dtype = f[f"{side}_dtype"]
    if dtype in FLOAT_DTYPES:
        return f"{dtype} (not quantized)"
    sym = "sym" if f[f"{side}_sym"] else "asym"
    return f"{dtype} {sym} {f[f'{side}_granularity']} {f[f'{side}_algo']}"


def _outcome(f: Mapping[str, object]) -> str:
    w, a = f["w_dtype"], f["act_dtype"]
    if w in FLOAT_DTYPES and a in FLOAT_DTYPES:
        return f"{a} (fallback)" if w == a else f"weights {w}, activations {a} (fallback)"
    return f"weights {_side_text('w', f)}, activations {_side_text('act', f)}"


@dataclass(frozen=True, slots=True)
class FieldResolution:
    """The per-op fields one op ends up with: the global config's, then every matching rule's in order."""

    values: Mapping[str, object]
    applied: tuple[str, ...]
    """The rules applied since the last full config (how the user wrote each)."""
    overridden: tuple[str, ...]
    """Full configs that a later full config replaced."""

    @property
    def source(self) -> str:
        return ", then ".join(self.applied) or "global config"

    def reason(self, outcome: str) -> str:
        return f"{self.source} -> {outcome}" + (f" (overrides {', '.join(self.overridden)})" if self.overridden else "")


def _merge(cfg: LocalConfigurable, rules: Sequence[_Rule]) -> FieldResolution:
    values, applied, overridden = dict(cfg.per_op_fields()), list[str](), list[str]()
    for rule in rules:
        if rule.full:
            overridden, applied = overridden + applied, []
        applied.append(rule.label)
        values.update(rule.fields)
    return FieldResolution(values, tuple(applied), tuple(overridden))


def resolve_fields(
    cfg: LocalConfigurable, ops: Sequence[OpRef], *, known_op_types: Collection[str] | None = None
) -> list[FieldResolution]:
    """The per-op fields of every op, in order, under any config with INC's `set_local` (and 2.x dict) rules.
    Raises ConfigError for unknown op types and invalid regexes; warns (ConfigWarning) for rules that match no op,
    with the nearest names."""
    cfg.validate()
    ops = list(ops)
    has_rules = bool(cfg.local_config or cfg.op_name_dict or cfg.op_type_dict)
    # The op-type vocabulary only classifies rule keys; loading every ONNX schema is skipped when there are none.
    vocab = (
        (onnx_op_types() | TORCH_MODULE_TYPES | _model_types(ops) | set(known_op_types or ())) if has_rules else set()
    )
    rules = _build_rules(cfg, ops, vocab)
    used = [False] * len(rules)
    merged: dict[tuple[int, ...], FieldResolution] = {}
    out = []
    for op in ops:
        hits = tuple(i for i, rule in enumerate(rules) if rule.matches(op))
        for i in hits:
            used[i] = True
        if hits not in merged:
            merged[hits] = _merge(cfg, [rules[i] for i in hits])
        out.append(merged[hits])
    implicit = {f"set_local({local_key_label(k)})" for k in getattr(cfg, "implicit_locals", ())}
    for rule, hit in zip(rules, used):
        if not hit and rule.label not in implicit:  # a default the user did not write (INC's LM-head locals)
            warnings.warn(_unmatched(rule, ops), ConfigWarning, stacklevel=3)
    return out


def _decide(cfg: StaticQuantConfig, res: FieldResolution) -> _Decision:
    values = res.values
    check_combination(values, cfg.excluded_precisions, owner=res.source)
    weight, activation = _request("w", values), _request("act", values)
    fallback = None if weight or activation else FLOAT_DTYPES[str(values["act_dtype"])]
    return _Decision(weight, activation, res.reason(_outcome(values)), values["reduce_range"],  # type: ignore[arg-type]
                     values["percentile"], fallback)  # type: ignore[arg-type]  # fmt: skip


def resolve_op_configs(
    cfg: StaticQuantConfig, ops: Sequence[OpRef], *, known_op_types: Collection[str] | None = None
) -> list[ResolvedOpConfig]:
    """One ResolvedOpConfig per op, in order. `known_op_types` adds op type names (e.g. a backend's fused types) to
    those recognised as types. Raises ConfigError for unknown op types and invalid regexes; warns (ConfigWarning)
    for rules that match no op, with the nearest names."""
    ops = list(ops)
    decisions: dict[int, _Decision] = {}
    out = []
    for op, res in zip(ops, resolve_fields(cfg, ops, known_op_types=known_op_types), strict=True):
        d = decisions.get(id(res))
        if d is None:
            try:
                d = decisions[id(res)] = _decide(cfg, res)
            except ConfigError as e:
                raise ConfigError(f"op {op.name!r} ({op.op_type}): {e}") from None
        out.append(
            ResolvedOpConfig(op, d.weight, d.activation, d.reason, d.reduce_range, d.percentile, d.fallback_dtype)
        )
    return out


def _unmatched(rule: _Rule, ops: Sequence[OpRef]) -> str:
    if rule.by_type:
        present = ", ".join(sorted(_model_types(ops))) or "none"
        return f"{rule.label} matches no op (an op type); op types in the model: {present}"
    names = list(dict.fromkeys(n for op in ops for n in (op.module_path, op.name) if n))
    close = nearest(rule.pattern.pattern, names, cutoff=0.5)
    how = "re.fullmatch" if rule.fullmatch else "re.match"
    near = (
        "nearest names: " + ", ".join(map(repr, close))
        if close
        else "no similar names; e.g. " + ", ".join(map(repr, names[:3]))
    )
    return f"{rule.label} matches no op (a name regex, {how} on module paths and node names); {near}"
