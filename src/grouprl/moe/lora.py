"""Multi-LoRA layers: E stacked LoRA experts on one frozen linear layer (spec-seed-systems §3.3).

For a row n (one environment step: prompt and response tokens alike) with routing weights
``w_n ∈ Δ^E``::

    y = W x + Σ_e w_{n,e} · ΔW_e x,        ΔW_e = (α / r) · B_e A_e

with ``A ∈ (E, r, d_in)`` (Kaiming-uniform, as peft and ``nn.Linear``) and ``B ∈ (E, d_out, r)``
initialised to 0, so a fresh layer computes the base exactly. The base runs **once** per forward,
whatever E.

Two forward paths, chosen by what :func:`route` was given:

* ``experts`` (N,) — **hard routing** (default): row n uses only expert ``e_n``; the rows of
  each expert go through that expert's A and B alone, so an expert gets gradient only from its
  rows (gradient isolation) and no work is spent on the others;
* ``weights`` (N, E) — **dense routing** (soft mixture, or straight-through one-hot weights that
  carry the router's gradient): ``Σ_e w_{n,e} B_e (A_e x)`` as two GEMMs of rank E·r. An expert
  whose weight is 0 on every row gets an exactly zero gradient.

Reference mode: with E = 1 and no routing set, the layer computes
``W x + B_0 (A_0 dropout(x)) · α/r`` in peft's operation order, so it equals a single peft LoRA
bit for bit (``tests/moe/test_reference_mode.py``).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from grouprl.validation import check_int, check_number

from .options import check_target_modules

__all__ = ["MultiLoRALinear", "Routing", "inject_multi_lora", "multi_lora_layers", "route",
           "add_token_gates",
           "set_routing", "clear_routing", "adapters_disabled", "multi_lora_state_dict",
           "load_multi_lora_state_dict"]


@dataclass(frozen=True)
class Routing:
    """The routing of the next forwards: hard ``experts`` (N,), dense ``weights`` (N, E), or
    one ``uniform`` expert for every row of any forward (whatever its batch size).

    ``groups`` holds, for hard routing, ``(expert, row indices)`` per expert present, computed
    once by :func:`route` and shared by every layer.
    """

    experts: torch.Tensor | None = None
    weights: torch.Tensor | None = None
    groups: tuple[tuple[int, torch.Tensor | None], ...] = ()
    uniform: int | None = None

    @property
    def rows(self) -> int | None:
        """Rows the routing is set for (``None``: any number, uniform routing)."""
        if self.uniform is not None:
            return None
        return int((self.experts if self.experts is not None else self.weights).shape[0])


class MultiLoRALinear(nn.Module):
    """A frozen ``nn.Linear`` plus E LoRA experts routed per row (module docstring)."""

    def __init__(self, base_layer: nn.Linear, num_experts: int, rank: int, alpha: float,
                 dropout: float = 0.0) -> None:
        super().__init__()
        if not isinstance(base_layer, nn.Linear):
            raise TypeError(f"base_layer: expected an nn.Linear, got {type(base_layer).__name__}")
        check_int("num_experts", num_experts, 1)
        check_int("rank", rank, 1)
        check_number("alpha", alpha, 0.0, low_open=True)
        check_number("dropout", dropout, 0.0, 1.0, high_open=True)
        self.base_layer = base_layer.requires_grad_(False)
        self.num_experts, self.rank, self.alpha = num_experts, rank, float(alpha)
        self.scaling = float(alpha) / rank                                  # α / r
        w = base_layer.weight
        self.lora_A = nn.Parameter(torch.empty(num_experts, rank, base_layer.in_features,
                                               dtype=w.dtype, device=w.device))
        self.lora_B = nn.Parameter(torch.zeros(num_experts, base_layer.out_features, rank,
                                               dtype=w.dtype, device=w.device))
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.routing: Routing | None = None
        self.adapters_enabled = True
        self.token_gate: nn.Linear | None = None      # token-level routing (baseline), if added
        self.reset_parameters()

    def add_token_gate(self) -> nn.Linear:
        """Route every TOKEN with its own soft weights ``w = softmax(G x)`` (G: E × d_in, zero
        at init, so every expert weighs 1/E): the token-level MoE baseline of PA-MoE's study
        (MoLoRA-style), used when no row routing is set."""
        w = self.lora_A
        self.token_gate = nn.Linear(self.base_layer.in_features, self.num_experts, bias=False,
                                    dtype=w.dtype, device=w.device)
        nn.init.zeros_(self.token_gate.weight)
        return self.token_gate

    def reset_parameters(self) -> None:
        """A_e ~ Kaiming-uniform(a=√5) per expert (peft / nn.Linear default), B = 0."""
        with torch.no_grad():
            for e in range(self.num_experts):
                nn.init.kaiming_uniform_(self.lora_A[e], a=math.sqrt(5))
            self.lora_B.zero_()

    def extra_repr(self) -> str:
        return f"experts={self.num_experts}, rank={self.rank}, alpha={self.alpha:g}"

    def delta_weight(self, expert: int) -> torch.Tensor:
        """ΔW_e = (α/r) B_e A_e, shape (d_out, d_in)."""
        return self.scaling * (self.lora_B[expert] @ self.lora_A[expert])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        result = self.base_layer(x)                                          # W x, once
        if not self.adapters_enabled:
            return result
        out_dtype = result.dtype
        x = x.to(self.lora_A.dtype)
        routing = self.routing
        if routing is not None and routing.rows not in (None, x.shape[0]):
            raise ValueError(f"routing: set for {routing.rows} rows but the forward has "
                             f"{x.shape[0]}; call route(model, ...) with the batch's rows")
        if routing is not None and routing.weights is not None:
            result = result + self._dense(self.lora_dropout(x), routing.weights)
        elif routing is None and self.token_gate is not None:
            x = self.lora_dropout(x)
            result = result + self._dense(x, torch.softmax(self.token_gate(x), dim=-1))
        elif routing is None and self.num_experts > 1:
            raise RuntimeError(f"routing: no experts set for a layer with {self.num_experts} "
                               "experts; wrap the forward in route(model, experts=...)")
        elif routing is None or len(routing.groups) == 1:
            e = 0 if routing is None else routing.groups[0][0]
            result = result + F.linear(F.linear(self.lora_dropout(x), self.lora_A[e]),
                                       self.lora_B[e]) * self.scaling       # peft's order
        else:
            result = self._hard(x, result, routing.groups)
        return result.to(out_dtype)

    def _hard(self, x: torch.Tensor, result: torch.Tensor,
              groups: Sequence[tuple[int, torch.Tensor]]) -> torch.Tensor:
        """``result[rows_e] += (α/r) B_e A_e dropout(x[rows_e])`` for each expert e present."""
        for e, rows in groups:
            rows = rows.to(x.device)
            delta = F.linear(F.linear(self.lora_dropout(x[rows]), self.lora_A[e]),
                             self.lora_B[e]) * self.scaling
            result = result.index_add(0, rows, delta.to(result.dtype))
        return result

    def _dense(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """``(α/r) Σ_e w_{n,e} B_e (A_e x)``: A stacked to (E·r, d_in), B to (d_out, E·r)."""
        e, r = self.num_experts, self.rank
        per_token = weights.dim() == x.dim() and weights.shape[:-1] == x.shape[:-1]
        if not per_token and (weights.dim() != 2 or weights.shape[1] != e):
            raise ValueError(f"routing: weights must have shape (rows, {e}), got "
                             f"{tuple(weights.shape)}")
        xa = F.linear(x, self.lora_A.reshape(e * r, -1))                    # (N, ..., E·r)
        w = weights.to(xa.dtype)[..., None] if per_token else \
            weights.to(xa.dtype).reshape(weights.shape[0], *([1] * (x.dim() - 2)), e, 1)
        xa = (xa.unflatten(-1, (e, r)) * w).flatten(-2)                      # w_{n,e} · A_e x
        b = self.lora_B.permute(1, 0, 2).reshape(self.lora_B.shape[1], e * r)
        return F.linear(xa, b) * self.scaling                                # Σ_e B_e (·)


def _matches(name: str, targets: Sequence[str]) -> bool:
    """peft's ``target_modules`` rule: the full name, or its last dotted parts, equals a target."""
    return any(name == t or name.endswith("." + t) for t in targets)


def inject_multi_lora(model: nn.Module, *, num_experts: int, rank: int, alpha: float,
                      dropout: float = 0.0,
                      target_modules: Sequence[str] = ("q_proj", "k_proj", "v_proj", "o_proj")
                      ) -> list[str]:
    """Replace every ``nn.Linear`` whose name ends with a ``target_modules`` entry by a
    :class:`MultiLoRALinear`; freeze every other parameter. Returns the replaced names.

    Like ``peft.get_peft_model``: the base weights are frozen (``requires_grad=False``), only the
    experts train. The router is a separate module (:class:`grouprl.moe.router.PhaseRouter`).
    """
    targets = check_target_modules("target_modules", target_modules)
    if any(True for _ in multi_lora_layers(model)):
        raise ValueError("model: already holds multi-LoRA layers (inject_multi_lora called twice)")
    found = [(n, m) for n, m in model.named_modules() if n and _matches(n, targets)]
    if not found:
        raise ValueError(f"target_modules: no module of the model matches {list(targets)}")
    for name, module in found:
        if not isinstance(module, nn.Linear):
            raise TypeError(f"target_modules: {name} is a {type(module).__name__}, not an "
                            "nn.Linear")
    model.requires_grad_(False)
    for name, module in found:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, MultiLoRALinear(module, num_experts, rank, alpha, dropout))
    return [name for name, _ in found]


def multi_lora_layers(model: nn.Module) -> Iterator[tuple[str, MultiLoRALinear]]:
    """``(name, layer)`` of every :class:`MultiLoRALinear` in ``model``."""
    for name, module in model.named_modules():
        if isinstance(module, MultiLoRALinear):
            yield name, module


def _layers(model: nn.Module) -> list[MultiLoRALinear]:
    layers = [m for _, m in multi_lora_layers(model)]
    if not layers:
        raise ValueError("model: holds no multi-LoRA layers (call inject_multi_lora first)")
    return layers


def _make_routing(num_experts: int, experts: torch.Tensor | int | None,
                  weights: torch.Tensor | None) -> Routing:
    if (experts is None) == (weights is None):
        raise ValueError("route: give exactly one of experts (hard) or weights (dense)")
    if isinstance(experts, int) and not isinstance(experts, bool):
        if not 0 <= experts < num_experts:
            raise ValueError(f"experts: expected an index in [0, {num_experts - 1}], got "
                             f"{experts}")
        return Routing(groups=((experts, None),), uniform=experts)
    if weights is not None:
        if not isinstance(weights, torch.Tensor) or weights.dim() != 2 \
                or weights.shape[1] != num_experts or not weights.is_floating_point():
            raise ValueError(f"weights: expected a float tensor of shape (rows, {num_experts}), "
                             f"got {getattr(weights, 'shape', type(weights).__name__)}")
        return Routing(weights=weights)
    if not isinstance(experts, torch.Tensor) or experts.dim() != 1 or experts.is_floating_point():
        raise ValueError(f"experts: expected a 1-D integer tensor, got "
                         f"{getattr(experts, 'shape', type(experts).__name__)}")
    if experts.numel() and not bool(((experts >= 0) & (experts < num_experts)).all()):
        raise ValueError(f"experts: every index must be in [0, {num_experts - 1}], got "
                         f"{experts.tolist()}")
    present = torch.unique(experts).tolist()
    groups = tuple((int(e), torch.nonzero(experts == e).squeeze(1)) for e in present)
    return Routing(experts=experts, groups=groups)


def set_routing(model: nn.Module, experts: torch.Tensor | int | None = None,
                weights: torch.Tensor | None = None) -> None:
    """Route the next forwards of ``model``: ``experts`` (N,) hard, ``weights`` (N, E) dense,
    or ``experts`` an int: that expert for every row of every forward (a call generating one
    expert's rows, whatever its chunking).

    Row n of every later forward (batch dimension first; during KV-cached generation every
    decoding step) uses row n's routing, until :func:`clear_routing` or another call.
    """
    layers = _layers(model)
    routing = _make_routing(layers[0].num_experts, experts, weights)
    for layer in layers:
        layer.routing = routing


def clear_routing(model: nn.Module) -> None:
    """Forget the routing (an E = 1 model then uses its single expert; E > 1 raises)."""
    for layer in _layers(model):
        layer.routing = None


@contextmanager
def route(model: nn.Module, experts: torch.Tensor | int | None = None,
          weights: torch.Tensor | None = None) -> Iterator[nn.Module]:
    """Context manager: :func:`set_routing` inside, the previous routing restored on exit.

    Set it around generation (rows = the step prompts) and around every log-prob recomputation
    (rows = the micro-batch's rows, same order), with the experts stored at rollout.
    """
    layers = _layers(model)
    previous = [layer.routing for layer in layers]
    set_routing(model, experts, weights)
    try:
        yield model
    finally:
        for layer, old in zip(layers, previous):
            layer.routing = old


@contextmanager
def adapters_disabled(model: nn.Module) -> Iterator[nn.Module]:
    """Context manager: every multi-LoRA layer computes its base only (router features, KL
    reference). A model without multi-LoRA layers is left as is (it already is the base)."""
    layers = [m for _, m in multi_lora_layers(model)]
    previous = [layer.adapters_enabled for layer in layers]
    for layer in layers:
        layer.adapters_enabled = False
    try:
        yield model
    finally:
        for layer, old in zip(layers, previous):
            layer.adapters_enabled = old


def multi_lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """``{"<layer>.lora_A": (E, r, d_in), "<layer>.lora_B": (E, d_out, r)}`` (detached), and
    ``"<layer>.token_gate.weight"`` (E, d_in) for layers with a token gate."""
    return {key: param.detach() for key, param in _expert_params(model).items()}


def _expert_params(model: nn.Module) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for name, layer in multi_lora_layers(model):
        out[f"{name}.lora_A"] = layer.lora_A
        out[f"{name}.lora_B"] = layer.lora_B
        if layer.token_gate is not None:
            out[f"{name}.token_gate.weight"] = layer.token_gate.weight
    return out


def add_token_gates(model: nn.Module) -> list[nn.Linear]:
    """Give every multi-LoRA layer a token gate (:meth:`MultiLoRALinear.add_token_gate`): the
    token-level routing baseline. Returns the gates (trainable)."""
    return [layer.add_token_gate() for _, layer in multi_lora_layers(model)]


def load_multi_lora_state_dict(model: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """Copy ``state`` (from :func:`multi_lora_state_dict`) into ``model``'s experts, strictly:
    a missing or unexpected key, or a shape mismatch, raises ``ValueError`` naming it."""
    params = _expert_params(model)
    missing, unexpected = sorted(set(params) - set(state)), sorted(set(state) - set(params))
    if missing or unexpected:
        raise ValueError(f"state: missing keys {missing[:3]}, unexpected keys {unexpected[:3]}")
    for key, param in params.items():
        if tuple(state[key].shape) != tuple(param.shape):
            raise ValueError(f"state: {key} has shape {tuple(state[key].shape)}, the model's "
                             f"is {tuple(param.shape)}")
    with torch.no_grad():
        for key, param in params.items():
            param.copy_(state[key])
