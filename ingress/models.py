"""Request and response bodies of the merchant API.

Every model forbids unknown fields (a misspelled ``capture_metod`` is an
error, not a silently ignored option) and is strict: ``"100"`` is not 100,
``100.0`` is not 100 and ``true`` is not 1. Amounts are integers in minor
units, never floats.

Bounds that do not depend on the deployment are in the field types, so the
JSON Schema that FastAPI publishes (OpenAPI 3.1) states them: ``exclusiveMinimum``,
``maximum``, ``maxLength``, ``maxProperties``, ``enum``, ``pattern`` and
``additionalProperties: false``.

The one configured bound, ``Settings.amount_minor_max``, comes from a
validation context, never from a global::

    CreatePaymentRequest.model_validate(data, context={"settings": settings})

FastAPI validates body parameters without a context, so a route that takes a
model as its body passes it through ``within_settings(payload, settings)``
before using it. Without a context only the static ceiling
``limits.AMOUNT_MINOR_CEILING`` applies, which keeps every amount exact in
JavaScript and summable in 64 bits.
"""

from __future__ import annotations

from typing import Annotated, Any, Final, Literal, TypeVar

from email_validator import EmailNotValidError, validate_email
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    computed_field,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from ledger import currencies, limits
from ledger.config import Settings

ModelT = TypeVar("ModelT", bound=BaseModel)

# Text that ends up in Avro strings and Postgres text columns. Postgres refuses
# NUL outright and the other C0 controls only cause trouble in logs and
# provider dashboards, so they are refused here, where the merchant sees why.
SINGLE_LINE_PATTERN: Final = r"^[^\x00-\x1F\x7F]*$"
MULTI_LINE_PATTERN: Final = r"^[^\x00-\x08\x0B\x0C\x0E-\x1F\x7F]*$"  # tab, LF, CR allowed

# ISO 3166-1 alpha-2: the 249 officially assigned codes (Debian iso-codes, as
# shipped by pycountry 26.2.16). Embedded because pycountry is 8 MB for this.
_COUNTRY_CODES_TEXT: Final = (
    "AD AE AF AG AI AL AM AO AQ AR AS AT AU AW AX AZ BA BB BD BE BF BG BH BI BJ BL BM BN BO "
    "BQ BR BS BT BV BW BY BZ CA CC CD CF CG CH CI CK CL CM CN CO CR CU CV CW CX CY CZ DE DJ "
    "DK DM DO DZ EC EE EG EH ER ES ET FI FJ FK FM FO FR GA GB GD GE GF GG GH GI GL GM GN GP "
    "GQ GR GS GT GU GW GY HK HM HN HR HT HU ID IE IL IM IN IO IQ IR IS IT JE JM JO JP KE KG "
    "KH KI KM KN KP KR KW KY KZ LA LB LC LI LK LR LS LT LU LV LY MA MC MD ME MF MG MH MK ML "
    "MM MN MO MP MQ MR MS MT MU MV MW MX MY MZ NA NC NE NF NG NI NL NO NP NR NU NZ OM PA PE "
    "PF PG PH PK PL PM PN PR PS PT PW PY QA RE RO RS RU RW SA SB SC SD SE SG SH SI SJ SK SL "
    "SM SN SO SR SS ST SV SX SY SZ TC TD TF TG TH TJ TK TL TM TN TO TR TT TV TW TZ UA UG UM "
    "US UY UZ VA VC VE VG VI VN VU WF WS YE YT ZA ZM ZW"
)
COUNTRY_CODES: Final = frozenset(_COUNTRY_CODES_TEXT.split())


# --- validators ----------------------------------------------------------------------------
# Each raises a PydanticCustomError with a fixed message: an error must say what
# is wrong without repeating the value (ingress.validation strips inputs too).


def _known_currency(code: str) -> str:
    if not currencies.is_known(code):
        raise PydanticCustomError("currency_unknown", "Unknown or inactive ISO 4217 currency code")
    return code


def _currency_enum(schema: dict[str, Any]) -> None:
    # A callable, so the currency table is read when a schema is generated,
    # not when this module is imported.
    schema["enum"] = sorted(currencies.known_codes())


def _country_enum(schema: dict[str, Any]) -> None:
    schema["enum"] = sorted(COUNTRY_CODES)


def _metadata_schema(schema: dict[str, Any]) -> None:
    # pydantic states a key pattern as "patternProperties", which leaves keys
    # that do not match it unconstrained in the schema although validation
    # refuses them. "propertyNames" plus "additionalProperties" says what we do.
    patterns = schema.pop("patternProperties", {})
    for pattern, value_schema in patterns.items():
        schema.setdefault("propertyNames", {})["pattern"] = pattern
        schema["additionalProperties"] = value_schema


def _known_country(code: str) -> str:
    if code not in COUNTRY_CODES:
        raise PydanticCustomError("country_unknown", "Unknown ISO 3166-1 alpha-2 country code")
    return code


def _valid_email(value: str) -> str:
    try:
        # No DNS lookup: validation must not depend on the network, and a
        # customer's domain being down is no reason to refuse a payment.
        checked = validate_email(value, check_deliverability=False)
    except EmailNotValidError:
        # email-validator's reasons quote offending characters of the address:
        # a fixed message instead.
        raise PydanticCustomError("email_invalid", "Not a valid email address") from None
    return checked.normalized


def _within_configured_max(value: int | None, info: ValidationInfo) -> int | None:
    context = info.context
    settings = context.get("settings") if isinstance(context, dict) else None
    if value is not None and isinstance(settings, Settings) and value > settings.amount_minor_max:
        # The same error type and message as the static bound, so clients see
        # one kind of "too large" whichever bound they hit.
        raise PydanticCustomError(
            "less_than_equal",
            "Input should be less than or equal to {le}",
            {"le": settings.amount_minor_max},
        )
    return value


# --- field types ---------------------------------------------------------------------------

ProviderName = Literal["stripe", "paypal", "coinbase"]
CaptureMethodName = Literal["automatic", "manual"]

AmountMinor = Annotated[
    int,
    Field(
        gt=0,
        le=limits.AMOUNT_MINOR_CEILING,
        description=(
            "Integer amount in the currency's minor units (cents for EUR, yen for JPY). "
            "The deployment's configured maximum (amount_minor_max) may be lower than "
            "the maximum stated here."
        ),
    ),
    AfterValidator(_within_configured_max),
]
CurrencyCode = Annotated[
    str,
    Field(
        pattern=r"^[A-Z]{3}$",
        description="Active ISO 4217 code, upper case.",
        json_schema_extra=_currency_enum,
    ),
    AfterValidator(_known_currency),
]
CountryCode = Annotated[
    str,
    Field(
        pattern=r"^[A-Z]{2}$",
        description="ISO 3166-1 alpha-2 code, upper case.",
        json_schema_extra=_country_enum,
    ),
    AfterValidator(_known_country),
]
Email = Annotated[
    str,
    Field(max_length=limits.EMAIL_CHARS_MAX, json_schema_extra={"format": "email"}),
    AfterValidator(_valid_email),
]
AddressLine = Annotated[
    str, Field(max_length=limits.ADDRESS_LINE_CHARS_MAX, pattern=SINGLE_LINE_PATTERN)
]
Reason = Annotated[str, Field(max_length=limits.REASON_CHARS_MAX, pattern=MULTI_LINE_PATTERN)]
MetadataKey = Annotated[
    str,
    Field(min_length=1, max_length=limits.METADATA_KEY_CHARS_MAX, pattern=SINGLE_LINE_PATTERN),
]
MetadataValue = Annotated[
    str, Field(max_length=limits.METADATA_VALUE_CHARS_MAX, pattern=MULTI_LINE_PATTERN)
]
Metadata = Annotated[
    dict[MetadataKey, MetadataValue],
    Field(
        max_length=limits.METADATA_ENTRIES_MAX,
        description="The merchant's own key-value pairs, stored with the payment.",
        json_schema_extra=_metadata_schema,
    ),
]


# --- models --------------------------------------------------------------------------------


class StrictModel(BaseModel):
    """Base of every merchant API model: unknown fields refused, no coercion, immutable."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class Address(StrictModel):
    line1: AddressLine | None = None
    line2: AddressLine | None = None
    city: AddressLine | None = None
    postal_code: (
        Annotated[str, Field(max_length=limits.POSTAL_CODE_CHARS_MAX, pattern=SINGLE_LINE_PATTERN)]
        | None
    ) = None
    state: AddressLine | None = None
    country: CountryCode | None = None


class CustomerDetails(StrictModel):
    """The paying customer. Sealed under the customer's own data key, never stored in clear."""

    reference: Annotated[
        str,
        Field(
            min_length=1,
            max_length=limits.CUSTOMER_REFERENCE_CHARS_MAX,
            pattern=SINGLE_LINE_PATTERN,
            description="The merchant's own id for this customer.",
        ),
    ]
    email: Email | None = None
    name: (
        Annotated[
            str, Field(max_length=limits.CUSTOMER_NAME_CHARS_MAX, pattern=SINGLE_LINE_PATTERN)
        ]
        | None
    ) = None
    address: Address | None = None


class CreatePaymentRequest(StrictModel):
    """Create a payment intent with one provider."""

    provider: ProviderName
    amount_minor: AmountMinor
    currency: CurrencyCode
    capture_method: CaptureMethodName = Field(
        default="automatic",
        description="manual: authorize now, capture later with /capture.",
    )
    description: (
        Annotated[str, Field(max_length=limits.DESCRIPTION_CHARS_MAX, pattern=MULTI_LINE_PATTERN)]
        | None
    ) = None
    metadata: Metadata = Field(default_factory=dict)
    customer: CustomerDetails | None = None


class CaptureRequest(StrictModel):
    """Capture an authorized payment: all of it when ``amount_minor`` is absent."""

    amount_minor: AmountMinor | None = None


class RefundRequest(StrictModel):
    """Refund a captured payment: all of it when ``amount_minor`` is absent."""

    amount_minor: AmountMinor | None = None
    reason: Reason | None = None


class CancelRequest(StrictModel):
    """Cancel a payment that is not captured yet."""

    reason: Reason | None = None


class PaymentLinks(StrictModel):
    payment: str = Field(description="Where to read the payment's current state.")


class AcceptedResponse(StrictModel):
    """202 body: the command is durably recorded; the provider call happens after."""

    payment_id: str
    event_id: str = Field(description="The id of the command event on the ledger.")
    status: Literal["accepted"] = "accepted"

    @computed_field  # type: ignore[prop-decorator]  # pydantic's documented idiom
    @property
    def links(self) -> PaymentLinks:
        return PaymentLinks(payment=f"/v1/payments/{self.payment_id}")


def within_settings(payload: ModelT, settings: Settings) -> ModelT:
    """``payload`` validated again with ``settings`` as its context.

    For routes whose body FastAPI validated (without a context): raises
    ``pydantic.ValidationError`` when a configured bound is exceeded, which
    ``ingress.validation`` renders as the same 422 problem as any other error.
    """
    # Only amount_minor has a configured bound; checking it alone keeps the rest
    # (email, patterns) from being validated a second time on the hot path.
    amount = getattr(payload, "amount_minor", None)
    if amount is None or amount <= settings.amount_minor_max:
        return payload
    raise ValidationError.from_exception_data(
        type(payload).__name__,
        [
            InitErrorDetails(
                type=PydanticCustomError(
                    "less_than_equal",
                    "Input should be less than or equal to {le}",
                    {"le": settings.amount_minor_max},
                ),
                loc=("amount_minor",),
                input=amount,
            )
        ],
    )
