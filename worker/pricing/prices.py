"""Price a turn in integer nano-USD.

Prices come from ``genai-prices`` (Pydantic's open price database, USD per million tokens) and from
an override table for models it lacks or for negotiated rates.  Every price is held as an integer
*nano-USD per million tokens* (``*_nanos_per_mtok``): USD 2.50 / MTok is ``2_500_000_000``.  Any
price with at most nine decimals is exact in that unit, and the cost of a turn is

    cost_nanos = round_half_up((uncached_prompt * input + cached * cache_read + cache_write * cache_write_rate
                                + completion * output) / 10**6)

computed in integers, rounded once per turn.  Cached and cache-write prompt tokens are part of
``prompt_tokens`` and are billed at the cache-read and cache-write prices (at the input price when
the model has none), as genai-prices does.  Tiered prices (a higher rate for every token once the prompt crosses a
threshold, genai-prices' ``TieredPrices``) are resolved per turn from the prompt length.

Models whose genai-prices entry prices anything beyond prompt, cache-read and completion tokens
(e.g. a per-request fee) are priced through genai-prices' own ``ModelPrice.calc_price`` instead, so
the figure always equals genai-prices' to the nano.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from pathlib import Path
from typing import Mapping, NamedTuple

from genai_prices import Usage
from genai_prices.data_snapshot import get_snapshot
from genai_prices.types import ModelInfo, ModelPrice, TieredPrices

from worker.errors import InputError

NANOS_PER_USD = 10**9
TOKENS_PER_MTOK = 10**6

#: genai-prices price keys whose units a turn never reports; they cannot change a turn's cost.
_UNREPORTED_KEYS = frozenset({"web_searches_kcount", "storage_searches_kcount", "file_searches_kcount"})
_TOKEN_KEYS = frozenset({"input_mtok", "cache_read_mtok", "cache_write_mtok", "cache_write_1h_mtok", "output_mtok"})
#: service tiers billed at the standard price (OpenAI's ``default`` / ``auto``, Anthropic's ``standard``)
STANDARD_TIERS = frozenset({"default", "auto", "standard"})


class PricingError(InputError, ValueError):
    """A turn cannot be priced: unknown model or provider and no override, or a bad price."""

    title = "Unknown price"


class TurnLimitExceeded(InputError, ValueError):
    """One turn is above a per-turn limit: its tokens above the model's context window, a meter's
    quantity above its per-turn maximum (``worker.pricing.meters``), or its cost above its app's
    ``max_turn_cost_nanos``.  ``field`` names what is too large (``prompt_tokens``,
    ``completion_tokens``, ``quantity``, ``cost_nanos``); ``index`` is the turn's position in a batch
    (set by the gate).  Nothing was charged."""

    title = "Turn above a limit"

    def __init__(self, field: str, message: str, *, index: int | None = None) -> None:
        super().__init__(f"{field}: {message}", field=field)
        self.message, self.index = message, index


#: a decimal amount as text, ASCII only: ``Decimal`` alone also reads ``1_000`` and other scripts'
#: digits (``١٢`` as 12), which no one means as an amount of money
DECIMAL_TEXT = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?\Z")


def decimal_text_problem(text: str) -> str | None:
    """Why ``text`` (surrounding whitespace ignored) is not a decimal amount in ASCII (digits,
    one ``.``, an optional sign and exponent: ``25``, ``0.05``, ``1e3``), or None."""
    if DECIMAL_TEXT.match(text.strip()):
        return None
    return f"{text!r} is not a decimal amount in ASCII digits (e.g. 25.00)"


def usd_to_nanos(usd: Decimal | str | int) -> int:
    """Exact USD amount → integer nano-USD, in integer arithmetic (no decimal context rounding).

    Raises :class:`PricingError` for a non-number (text must be ASCII decimal syntax:
    :func:`decimal_text_problem`), an infinity/NaN, a fraction of a nano, or an amount beyond
    10^30 USD.
    """
    if isinstance(usd, str) and decimal_text_problem(usd):
        raise PricingError(f"not a decimal USD amount: {usd!r} (ASCII digits, e.g. 25.00)")
    try:
        value = Decimal(str(usd).strip())
    except InvalidOperation as exc:
        raise PricingError(f"not a decimal USD amount: {usd!r}") from exc
    if not value.is_finite():
        raise PricingError(f"not a finite USD amount: {usd!r}")
    sign, digits, exponent = value.as_tuple()
    shift = int(exponent) + 9
    if len(digits) + shift > 40:
        raise PricingError(f"{usd} USD is too large")
    nanos = int("".join(map(str, digits)) or "0")
    if shift >= 0:
        nanos *= 10**shift
    elif nanos:
        if -shift > len(digits):
            raise PricingError(f"{usd} USD is not a whole number of nano-USD")
        nanos, rest = divmod(nanos, 10**-shift)
        if rest:
            raise PricingError(f"{usd} USD is not a whole number of nano-USD")
    return -nanos if sign else nanos


def nanos_to_usd(nanos: int) -> str:
    """Integer nano-USD → decimal string of USD for display (``1500000000`` → ``"1.500000000"``)."""
    sign = "-" if nanos < 0 else ""
    whole, frac = divmod(abs(nanos), NANOS_PER_USD)
    return f"{sign}{whole}.{frac:09d}"


@dataclass(frozen=True, slots=True)
class Tiered:
    """A price that applies to every token once the prompt exceeds ``start`` tokens.

    ``tiers`` is ``((start_tokens, nanos_per_mtok), ...)`` ascending; ``base`` below the first.
    """

    base: int
    tiers: tuple[tuple[int, int], ...]

    def at(self, prompt_tokens: int) -> int:
        """The nanos-per-MTok rate for a turn with ``prompt_tokens`` of prompt."""
        for start, price in reversed(self.tiers):
            if prompt_tokens > start:
                return price
        return self.base


Rate = int | Tiered


def _rate_at(rate: Rate, prompt_tokens: int) -> int:
    return rate.at(prompt_tokens) if isinstance(rate, Tiered) else rate


class TurnPrice(NamedTuple):
    """What one turn costs and the unit prices it was charged at (kept with the usage event).
    Immutable; a named tuple rather than a frozen dataclass because the gate makes one per turn
    (0.3 µs against 1 µs, at tens of thousands of turns a second).

    Attributes:
        cost_nanos: cost of the turn, nano-USD.
        input_nanos_per_mtok / cached_input_nanos_per_mtok / output_nanos_per_mtok: the rates
            applied, nano-USD per million tokens (after tier selection).
        model / provider: the resolved model id and provider id.
    """

    cost_nanos: int
    input_nanos_per_mtok: int
    cached_input_nanos_per_mtok: int
    output_nanos_per_mtok: int
    model: str
    provider: str
    #: rate applied to prompt tokens written to the provider's cache (Anthropic's cache creation)
    cache_write_nanos_per_mtok: int = 0
    #: rate applied to the cache writes of the 1-hour cache (Anthropic's ``ephemeral_1h``)
    cache_write_1h_nanos_per_mtok: int = 0


@dataclass(frozen=True, slots=True)
class PriceSheet:
    """Resolved prices of one model at one provider on one UTC date.

    ``exotic`` holds genai-prices' ``ModelPrice`` when it prices units beyond tokens; the cost is then
    taken from genai-prices itself.
    """

    model: str
    provider: str
    input: Rate
    cache_read: Rate
    output: Rate
    exotic: ModelPrice | None = None
    #: cache-write rate; None: the model has none, cache writes cost the input rate
    cache_write: Rate | None = None
    #: 1-hour cache-write rate; None: the model has none, they cost the cache-write rate
    cache_write_1h: Rate | None = None
    #: tokens (prompt, cached and cache-write included, plus completion) one call of the model may
    #: hold: genai-prices' ``context_window``, or an override's ``"context_window"``; None: unknown
    context_window: int | None = None

    def check_window(self, prompt_tokens: int, completion_tokens: int) -> None:
        """Raise :class:`TurnLimitExceeded` when ``prompt_tokens`` (which count the cached and
        cache-write tokens) plus ``completion_tokens`` exceed :attr:`context_window`, naming
        ``prompt_tokens`` if they alone do, else ``completion_tokens``."""
        window = self.context_window
        if window is None or prompt_tokens + completion_tokens <= window:
            return
        field = "prompt_tokens" if prompt_tokens > window else "completion_tokens"
        raise TurnLimitExceeded(
            field,
            f"{prompt_tokens:,} prompt + {completion_tokens:,} completion tokens "
            f"exceed {self.model}'s context window of {window:,} tokens",
        )

    def price(
        self,
        prompt_tokens: int,
        completion_tokens: int,
        cached_prompt_tokens: int,
        cache_write_tokens: int = 0,
        cache_write_1h_tokens: int = 0,
    ) -> TurnPrice:
        """Price one turn.  Token counts are validated by the caller (non-negative, cached +
        cache-write ≤ prompt, 1-hour writes ≤ cache writes): ``prompt_tokens`` counts every input
        token, of which ``cached_prompt_tokens`` were read from and ``cache_write_tokens`` written to
        the cache, ``cache_write_1h_tokens`` of those to the 1-hour cache (as genai-prices' ``Usage``)."""
        input_rate = _rate_at(self.input, prompt_tokens)
        cached_rate = _rate_at(self.cache_read, prompt_tokens)
        output_rate = _rate_at(self.output, prompt_tokens)
        write_rate = input_rate if self.cache_write is None else _rate_at(self.cache_write, prompt_tokens)
        write_1h_rate = write_rate if self.cache_write_1h is None else _rate_at(self.cache_write_1h, prompt_tokens)
        if self.exotic is not None:
            usage = Usage(
                input_tokens=prompt_tokens,
                cache_read_tokens=cached_prompt_tokens,
                cache_write_tokens=cache_write_tokens,
                output_tokens=completion_tokens,
            )
            if cache_write_1h_tokens:
                usage.cache_write_1h_tokens = cache_write_1h_tokens
            total = self.exotic.calc_price(usage)["total_price"] * NANOS_PER_USD
            cost = int(total.to_integral_value(rounding=ROUND_HALF_UP))
        else:
            micro = (
                (prompt_tokens - cached_prompt_tokens - cache_write_tokens) * input_rate
                + cached_prompt_tokens * cached_rate
                + (cache_write_tokens - cache_write_1h_tokens) * write_rate
                + cache_write_1h_tokens * write_1h_rate
                + completion_tokens * output_rate
            )
            cost = (micro + TOKENS_PER_MTOK // 2) // TOKENS_PER_MTOK
        return TurnPrice(
            cost, input_rate, cached_rate, output_rate, self.model, self.provider, write_rate, write_1h_rate
        )


def _to_rate(value: Decimal | TieredPrices) -> Rate:
    if isinstance(value, TieredPrices):
        return Tiered(
            base=usd_to_nanos(value.base),
            tiers=tuple((t.start, usd_to_nanos(t.price)) for t in value.tiers),
        )
    return usd_to_nanos(value)


def _sheet_from_model_price(model: str, provider: str, mp: ModelPrice, context_window: int | None = None) -> PriceSheet:
    """A sheet from genai-prices' resolved ``ModelPrice`` (and the model's ``context_window``); a
    model with no token prices is free."""
    keys = {k for k, v in mp.__dict__.items() if v is not None and not k.startswith("_")}
    try:
        input_rate = _to_rate(mp.input_mtok) if mp.input_mtok is not None else 0
        cache_rate = _to_rate(mp.cache_read_mtok) if mp.cache_read_mtok is not None else input_rate
        write_rate = _to_rate(mp.cache_write_mtok) if mp.cache_write_mtok is not None else None
        write_1h_rate = _to_rate(mp.cache_write_1h_mtok) if mp.cache_write_1h_mtok is not None else None
        output_rate = _to_rate(mp.output_mtok) if mp.output_mtok is not None else 0
    except PricingError:  # a rate finer than a nano per MTok: let genai-prices compute it
        return PriceSheet(model, provider, 0, 0, 0, exotic=mp, context_window=context_window)
    exotic = mp if keys - _TOKEN_KEYS - _UNREPORTED_KEYS else None
    return PriceSheet(
        model, provider, input_rate, cache_rate, output_rate, exotic, write_rate, write_1h_rate, context_window
    )


def _override_key(provider: str | None, model: str) -> str:
    return f"{(provider or '').lower()}/{model.lower()}"


class PriceBook:
    """Resolves ``(model, provider, when)`` to a :class:`PriceSheet`, overrides first.

    Args:
        overrides: ``{"provider/model": {"input_mtok": "1.00", "cache_read_mtok": "0.25",
            "output_mtok": "4.00"}}`` in USD per million tokens as decimal strings.  A key with an
            empty provider (``"/my-model"``) matches that model at any provider.  An optional
            ``"context_window"`` (an integer of tokens > 0) bounds one turn's prompt + completion.

    Raises:
        PricingError: an override is malformed (names the key and field).
    """

    def __init__(self, overrides: Mapping[str, Mapping[str, str]] | None = None) -> None:
        self._overrides: dict[str, PriceSheet] = {}
        for key, prices in (overrides or {}).items():
            if not isinstance(key, str) or not isinstance(prices, Mapping):
                raise PricingError(f"price override {key!r} must map a 'provider/model' key to an object of prices")
            provider, sep, model = key.partition("/")
            if not sep or not model:
                raise PricingError(f"price override key {key!r} must be 'provider/model'")
            unknown = set(prices) - _TOKEN_KEYS - {"context_window"}
            if unknown:
                raise PricingError(f"price override {key!r}: unknown field(s) {sorted(unknown)}")
            window = prices.get("context_window")
            if window is not None and (isinstance(window, bool) or not isinstance(window, int) or window <= 0):
                raise PricingError(f"price override {key!r}: context_window must be an integer of tokens > 0")
            try:
                rates = {k: usd_to_nanos(v) for k, v in prices.items() if k != "context_window"}
            except PricingError as exc:
                raise PricingError(f"price override {key!r}: {exc}") from exc
            if any(v < 0 for v in rates.values()):
                raise PricingError(f"price override {key!r}: prices must be >= 0")
            inp = rates.get("input_mtok", 0)
            self._overrides[_override_key(provider, model)] = PriceSheet(
                model=model,
                provider=provider or "custom",
                input=inp,
                cache_read=rates.get("cache_read_mtok", inp),
                output=rates.get("output_mtok", 0),
                cache_write=rates.get("cache_write_mtok"),
                cache_write_1h=rates.get("cache_write_1h_mtok"),
                context_window=window,
            )
        self._models: dict[tuple[str, str | None], PriceSheet | tuple[str, ModelInfo]] = {}
        self._sheets: dict[int, tuple[ModelPrice, PriceSheet]] = {}
        self._tier_sheets: dict[tuple, tuple[ModelPrice, PriceSheet]] = {}

    @classmethod
    def from_file(cls, path: str | Path | None) -> "PriceBook":
        """A price book with the overrides of a JSON file (see the class docstring), or none."""
        if not path:
            return cls()
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise PricingError(f"price overrides file {path}: {exc}") from exc
        return cls(data)

    def sheet(self, model: str, provider: str | None, when: datetime, service_tier: str | None = None) -> PriceSheet:
        """Prices of ``model`` at ``provider`` (``None``: genai-prices guesses) in force at ``when``,
        for the provider's ``service_tier`` (None or one of :data:`STANDARD_TIERS`: the standard price).

        genai-prices' conditional prices are honoured at the turn's own time: a new price from its
        start date, an off-peak price (e.g. DeepSeek's) within its hours, a service tier's price
        (genai-prices' ``price_variants`` for ``{"service_tier": …}``) from its start date (before
        it, the standard price, as genai-prices does).  Lookups and the integer sheets are cached
        per model and per resolved genai-prices price object.

        Raises:
            PricingError: unknown model or provider and no override; a ``service_tier`` for which
            genai-prices has no price for that model (an override has no tiers).
        """
        if service_tier is not None and service_tier not in STANDARD_TIERS:
            return self._tier_sheet(model, provider, when, service_tier)
        key = (model, provider)
        entry = self._models.get(key)
        if entry is None:
            entry = self._overrides.get(_override_key(provider, model)) or self._overrides.get(
                _override_key(None, model)
            )
            if entry is None:
                try:
                    prov, info = get_snapshot().find_provider_model(model, None, provider, None)
                except LookupError as exc:
                    raise PricingError(
                        f"unknown model {model!r} at provider {provider!r}: not in genai-prices and no override",
                        field="model",
                    ) from exc
                entry = (prov.id, info)
            self._models[key] = entry
        if isinstance(entry, PriceSheet):
            return entry
        provider_id, info = entry
        model_price = info.get_prices(when if when.tzinfo else when.replace(tzinfo=UTC))
        cached = self._sheets.get(id(model_price))
        if cached is not None and cached[0] is model_price:
            return cached[1]
        sheet = _sheet_from_model_price(info.id, provider_id, model_price, getattr(info, "context_window", None))
        self._sheets[id(model_price)] = (model_price, sheet)  # holding model_price keeps its id unique
        return sheet

    def _tier_sheet(self, model: str, provider: str | None, when: datetime, tier: str) -> PriceSheet:
        """:meth:`sheet` for a non-standard service tier."""
        self.sheet(model, provider, when)  # resolves (and caches) the model, or raises
        entry = self._models[(model, provider)]
        variants = () if isinstance(entry, PriceSheet) else (entry[1].price_variants or ())
        # an override (a PriceSheet) has no tiers: refused like a tier genai-prices does not price
        if isinstance(entry, PriceSheet) or not any(v.when.get("service_tier") == tier for v in variants):
            raise PricingError(
                f"service_tier: {tier!r} has no price for model {model!r} at provider {provider!r} "
                "in genai-prices (standard tiers: 'default', 'auto', 'standard')",
                field="service_tier",
            )
        provider_id, info = entry
        when = when if when.tzinfo else when.replace(tzinfo=UTC)
        standard = info.get_prices(when)
        active = tuple(i for i, v in enumerate(variants) if v.constraint is None or v.constraint.active(when))
        key = (id(standard), tier, active)
        cached = self._tier_sheets.get(key)
        if cached is not None and cached[0] is standard:
            return cached[1]
        sheet = _sheet_from_model_price(
            info.id, provider_id, info.get_prices(when, {"service_tier": tier}), getattr(info, "context_window", None)
        )
        self._tier_sheets[key] = (standard, sheet)  # holding standard keeps its id unique
        return sheet

    def price(
        self,
        *,
        model: str,
        provider: str | None,
        when: datetime,
        prompt_tokens: int,
        completion_tokens: int,
        cached_prompt_tokens: int = 0,
        cache_write_tokens: int = 0,
        cache_write_1h_tokens: int = 0,
        service_tier: str | None = None,
    ) -> TurnPrice:
        """Price one turn (tokens are integers ≥ 0, ``cached_prompt_tokens ≤ prompt_tokens``,
        ``cache_write_1h_tokens ≤ cache_write_tokens``) at ``service_tier`` (see :meth:`sheet`).

        Returns: a :class:`TurnPrice` with ``cost_nanos`` in nano-USD.
        Raises: PricingError for an unknown model/provider or service tier.
        """
        return self.sheet(model, provider, when, service_tier).price(
            prompt_tokens, completion_tokens, cached_prompt_tokens, cache_write_tokens, cache_write_1h_tokens
        )
