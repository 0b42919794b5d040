"""A realistic multi-tenant dataset for the benchmarks, loaded with COPY.

Companies of Zipf-skewed sizes (a few large, many small), their users, customers, properties, jobs,
schedules, invoices, payments, communications and activities, spread over the two years before now, and
a price book each.
Every value satisfies the CHECK constraints and foreign keys of sql/schema, and the partitioned tables'
columns stay inside their premade window. Rows are written per batch of companies in dependency order,
and only into the columns the live table has: the same generator fills the review's "before" tables
(fewer columns) and the full schema.

    python -m bench.generate --dsn "host=... dbname=thorbis user=postgres" --scale 1

At --scale 1: 100 companies, 20,000 customers, about 0.8 million rows; rows grow linearly with the scale.
"""

from __future__ import annotations

import argparse
import hashlib
import queue
import random
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar, cast

import psycopg
from psycopg import sql

#: Tables in the order they are loaded (each one's foreign keys point at tables loaded before it).
TABLES = (
    "companies",
    "users",
    "customers",
    "properties",
    "jobs",
    "schedules",
    "invoices",
    "payments",
    "communications",
    "activities",
    "price_book_items",
)
COMPANIES_PER_SCALE = 100
CUSTOMERS_PER_SCALE = 20_000
ZIPF_EXPONENT = 1.4  # the largest company holds a third of the customers: 54,549 at --scale 8
HISTORY_DAYS = 730
FUTURE_DAYS = 45  # inside pg_partman's premade window (4 months by default)
BATCH_ROWS = 200_000
DEFAULT_SCALE = 0.05

FIRST_NAMES = [
    "olivia",
    "emma",
    "ava",
    "sophia",
    "isabella",
    "mia",
    "amelia",
    "harper",
    "evelyn",
    "abigail",
    "emily",
    "ella",
    "elizabeth",
    "camila",
    "luna",
    "sofia",
    "avery",
    "mila",
    "aria",
    "scarlett",
    "liam",
    "noah",
    "oliver",
    "elijah",
    "james",
    "william",
    "benjamin",
    "lucas",
    "henry",
    "theodore",
    "jack",
    "levi",
    "alexander",
    "jackson",
    "mateo",
    "daniel",
    "michael",
    "mason",
    "sebastian",
    "ethan",
    "logan",
    "owen",
    "samuel",
    "jacob",
    "asher",
    "aiden",
    "john",
    "joseph",
    "wyatt",
    "david",
    "leo",
    "luke",
    "julian",
    "hudson",
    "grayson",
    "matthew",
    "ezra",
    "gabriel",
    "carter",
    "isaac",
    "jayden",
    "luca",
]
LAST_NAMES = [
    "smith",
    "johnson",
    "williams",
    "brown",
    "jones",
    "garcia",
    "miller",
    "davis",
    "rodriguez",
    "martinez",
    "hernandez",
    "lopez",
    "gonzalez",
    "wilson",
    "anderson",
    "thomas",
    "taylor",
    "moore",
    "jackson",
    "martin",
    "lee",
    "perez",
    "thompson",
    "white",
    "harris",
    "sanchez",
    "clark",
    "ramirez",
    "lewis",
    "robinson",
    "walker",
    "young",
    "allen",
    "king",
    "wright",
    "scott",
    "torres",
    "nguyen",
    "hill",
    "flores",
    "green",
    "adams",
    "nelson",
    "baker",
    "hall",
    "rivera",
    "campbell",
    "mitchell",
    "carter",
    "roberts",
    "gomez",
    "phillips",
    "evans",
    "turner",
    "diaz",
    "parker",
    "cruz",
    "edwards",
    "collins",
    "reyes",
    "stewart",
    "morris",
    "morales",
    "murphy",
    "cook",
    "rogers",
    "gutierrez",
    "ortiz",
    "morgan",
    "cooper",
    "peterson",
    "bailey",
    "reed",
    "kelly",
    "howard",
    "ramos",
    "kim",
    "cox",
    "ward",
    "richardson",
    "watson",
    "brooks",
    "chavez",
    "wood",
    "james",
]
CITIES = (
    ("Austin", "TX"),
    ("Dallas", "TX"),
    ("Houston", "TX"),
    ("Phoenix", "AZ"),
    ("Denver", "CO"),
    ("Atlanta", "GA"),
    ("Tampa", "FL"),
    ("Raleigh", "NC"),
    ("Nashville", "TN"),
    ("Columbus", "OH"),
)
STREETS = ("Oak St", "Maple Ave", "Cedar Ln", "Pine Rd", "Elm Dr", "Lakeview Blvd", "Hillcrest Way", "Main St")
JOB_TITLES = (
    "AC not cooling",
    "Furnace tune-up",
    "Water heater replacement",
    "Leaking kitchen faucet",
    "Panel upgrade",
    "Annual maintenance visit",
    "Thermostat install",
    "Drain cleaning",
    "Heat pump inspection",
    "Emergency no heat",
)
JOB_TYPES = ("service", "repair", "installation", "maintenance", "inspection", "emergency")
SOURCES = ("phone", "email", "online_booking", "portal", "referral")
WORDS = [
    "thanks",
    "for",
    "confirming",
    "the",
    "appointment",
    "the",
    "technician",
    "will",
    "arrive",
    "between",
    "eight",
    "and",
    "ten",
    "please",
    "make",
    "sure",
    "the",
    "unit",
    "is",
    "accessible",
    "we",
    "replaced",
    "the",
    "filter",
    "and",
    "checked",
    "the",
    "refrigerant",
    "levels",
    "invoice",
    "attached",
    "call",
    "us",
    "if",
    "the",
    "noise",
    "comes",
    "back",
    "your",
    "warranty",
    "covers",
    "parts",
    "labour",
    "estimate",
    "approved",
    "schedule",
    "follow",
    "up",
    "visit",
]
METHODS = ("credit_card", "credit_card", "ach", "check", "cash", "debit_card")
CARD_BRANDS = ("visa", "mastercard", "amex", "discover")
COMM_KINDS = (  # type, direction, status
    ("email", "outbound", "delivered"),
    ("email", "inbound", "received"),
    ("sms", "outbound", "delivered"),
    ("sms", "inbound", "received"),
    ("phone_call", "inbound", "answered"),
    ("phone_call", "outbound", "missed"),
    ("note", "internal", "sent"),
)
PARTS = (
    "condenser fan motor",
    "run capacitor",
    "contactor",
    "blower motor",
    "programmable thermostat",
    "flame sensor",
    "hot surface igniter",
    "pressure switch",
    "refrigerant r-410a",
    "pleated air filter",
    "water heater element",
    "gas control valve",
    "expansion valve",
    "drain pan",
    "circuit breaker",
    "ball valve",
)
MAKERS = ("carrier", "trane", "lennox", "goodman", "rheem", "honeywell", "emerson", "york")
ACTIVITY_ACTIONS = (
    ("job", "job.created"),
    ("job", "job.status_changed"),
    ("job", "job.completed"),
    ("invoice", "invoice.sent"),
    ("payment", "payment.received"),
    ("customer", "customer.updated"),
    ("schedule", "schedule.confirmed"),
)

Value = str | None
Row = tuple[Value, ...]

#: Columns each table is generated with, in the order of the generated tuples.
COLUMNS: dict[str, list[str]] = {
    "companies": [
        "id",
        "name",
        "legal_name",
        "slug",
        "email",
        "phone",
        "industry",
        "city",
        "state",
        "postal_code",
        "country",
        "timezone",
        "currency",
        "status",
        "subscription_plan",
        "created_at",
        "updated_at",
    ],
    "users": [
        "id",
        "company_id",
        "email",
        "full_name",
        "first_name",
        "last_name",
        "phone",
        "role",
        "status",
        "created_at",
        "updated_at",
    ],
    "customers": [
        "id",
        "company_id",
        "created_by",
        "preferred_technician",
        "customer_number",
        "customer_type",
        "status",
        "first_name",
        "last_name",
        "company_name",
        "display_name",
        "email",
        "phone",
        "preferred_contact_method",
        "billing_address_line1",
        "billing_city",
        "billing_state",
        "billing_postal_code",
        "lead_source",
        "payment_terms_days",
        "created_at",
        "updated_at",
    ],
    "properties": [
        "id",
        "company_id",
        "customer_id",
        "name",
        "property_type",
        "address_line1",
        "city",
        "state",
        "postal_code",
        "latitude",
        "longitude",
        "is_primary",
        "square_footage",
        "year_built",
        "created_at",
        "updated_at",
    ],
    "jobs": [
        "id",
        "company_id",
        "customer_id",
        "property_id",
        "assigned_to",
        "created_by",
        "job_number",
        "title",
        "job_type",
        "priority",
        "status",
        "source",
        "scheduled_start",
        "scheduled_end",
        "actual_start",
        "actual_end",
        "estimated_duration_minutes",
        "estimated_amount",
        "cancelled_at",
        "created_at",
        "updated_at",
    ],
    "schedules": [
        "id",
        "company_id",
        "customer_id",
        "property_id",
        "job_id",
        "assigned_to",
        "created_by",
        "schedule_type",
        "title",
        "start_time",
        "end_time",
        "arrival_window_minutes",
        "status",
        "confirmed_at",
        "created_at",
        "updated_at",
    ],
    "invoices": [
        "id",
        "company_id",
        "customer_id",
        "property_id",
        "job_id",
        "created_by",
        "invoice_number",
        "status",
        "currency",
        "issue_date",
        "due_date",
        "subtotal",
        "tax_rate",
        "tax_amount",
        "discount_amount",
        "total_amount",
        "paid_amount",
        "balance_amount",
        "payment_terms_days",
        "sent_at",
        "paid_at",
        "voided_at",
        "void_reason",
        "created_at",
        "updated_at",
    ],
    "payments": [
        "id",
        "company_id",
        "customer_id",
        "invoice_id",
        "job_id",
        "processed_by",
        "payment_number",
        "amount",
        "currency",
        "payment_method",
        "status",
        "received_at",
        "processor",
        "processor_payment_id",
        "card_brand",
        "card_last4",
        "created_at",
        "updated_at",
    ],
    "communications": [
        "id",
        "company_id",
        "customer_id",
        "job_id",
        "sent_by",
        "parent_id",
        "thread_id",
        "is_thread_starter",
        "type",
        "direction",
        "status",
        "subject",
        "body",
        "from_address",
        "to_address",
        "call_duration_seconds",
        "sent_at",
        "created_at",
        "updated_at",
    ],
    "activities": [
        "id",
        "company_id",
        "actor_id",
        "customer_id",
        "actor_type",
        "entity_type",
        "entity_id",
        "action",
        "summary",
        "occurred_at",
        "created_at",
        "updated_at",
    ],
    "price_book_items": [
        "id",
        "company_id",
        "item_type",
        "sku",
        "name",
        "unit_cost",
        "unit_price",
        "created_at",
        "updated_at",
    ],
}


def customer_id(company: int, number: int) -> str:
    """Customers' ids are derived, so a pgbench script can name one: md5('customer:<company>:<n>')::uuid."""
    return str(uuid.UUID(hashlib.md5(f"customer:{company}:{number}".encode()).hexdigest()))


def company_sizes(scale: float) -> list[int]:
    """Customers per company: Zipf-distributed over the companies, largest first, at least 3 each."""
    companies = max(5, round(COMPANIES_PER_SCALE * scale))
    customers = max(100, round(CUSTOMERS_PER_SCALE * scale))
    weights = [1 / (rank + 1) ** ZIPF_EXPONENT for rank in range(companies)]
    total = sum(weights)
    return [max(3, round(customers * weight / total)) for weight in weights]


def ts(moment: datetime) -> str:
    return moment.isoformat()


def maybe_ts(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat()


def money(cents: int) -> str:
    return f"{cents // 100}.{cents % 100:02d}"


@dataclass
class Batch:
    """Rows of some companies, per table, as COPY text lines."""

    lines: dict[str, list[str]] = field(default_factory=lambda: {table: [] for table in TABLES})

    def add(self, table: str, row: Row) -> None:
        self.lines[table].append("\t".join("\\N" if value is None else value for value in row) + "\n")

    @property
    def rows(self) -> int:
        return sum(len(lines) for lines in self.lines.values())


class Generator:
    """Deterministic rows (for a seed) for company after company; `now` anchors the two years."""

    def __init__(self, seed: int = 7, now: datetime | None = None) -> None:
        self.rng = random.Random(seed)
        self.now = (now or datetime.now(UTC)).replace(microsecond=0)
        self.start = self.now - timedelta(days=HISTORY_DAYS)

    def uuid(self) -> str:
        """A random version-4 UUID (uuid.UUID is slower than formatting the bits here)."""
        h = f"{self.rng.getrandbits(128):032x}"
        return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{'89ab'[int(h[16], 16) & 3]}{h[17:20]}-{h[20:]}"

    def moment(self, earliest: datetime | None = None, latest: datetime | None = None) -> datetime:
        low, high = earliest or self.start, latest or self.now
        return low + timedelta(seconds=self.rng.randrange(max(1, int((high - low).total_seconds()))))

    def company(self, batch: Batch, index: int, customers: int) -> None:
        rng = self.rng
        company = self.uuid()
        city, state = CITIES[index % len(CITIES)]
        plan = "enterprise" if customers > 2000 else "business" if customers > 400 else "professional"
        founded = self.start - timedelta(days=rng.randrange(1, 400))
        batch.add(
            "companies",
            (
                company, f"Bench Services {index}", f"Bench Services {index} LLC", f"bench-{index}",
                f"office@co{index}.example", f"+1512{index % 10_000_000:07d}", "hvac", city, state,
                f"7{index % 10000:04d}", "US", "America/Chicago", "USD", "active", plan, ts(founded), ts(founded),
            ),
        )  # fmt: skip
        users = [self.user(batch, company, index, n, founded) for n in range(max(2, customers // 150))]
        technicians = users[1:] or users
        for number in range(customers):
            self.customer(batch, company, index, number, users[0], technicians)
        self.price_book(batch, company, min(2000, 20 + customers // 20), founded)

    def price_book(self, batch: Batch, company: str, items: int, at: datetime) -> None:
        """Parts of a few makers and sizes: names close enough to each other for a fuzzy search to sort."""
        rng = self.rng
        for number in range(items):
            part, maker = rng.choice(PARTS), rng.choice(MAKERS)
            cost = rng.randrange(500, 90_000)
            batch.add(
                "price_book_items",
                (
                    self.uuid(), company, "material", f"P-{number:05d}", f"{maker} {part} {rng.randrange(1, 60)}",
                    money(cost), money(cost * 2), ts(at), ts(at),
                ),
            )  # fmt: skip

    def user(self, batch: Batch, company: str, index: int, number: int, founded: datetime) -> str:
        first, last = self.rng.choice(FIRST_NAMES), self.rng.choice(LAST_NAMES)
        user = self.uuid()
        role = "owner" if number == 0 else "dispatcher" if number == 1 else "technician"
        batch.add(
            "users",
            (
                user, company, f"{first}.{last}.{number}@co{index}.example", f"{first.title()} {last.title()}",
                first.title(), last.title(), f"+1737{self.rng.randrange(10**7):07d}", role, "active",
                ts(founded), ts(founded),
            ),
        )  # fmt: skip
        return user

    def customer(
        self, batch: Batch, company: str, index: int, number: int, owner: str, technicians: Sequence[str]
    ) -> None:
        rng = self.rng
        first, last = rng.choice(FIRST_NAMES), rng.choice(LAST_NAMES)
        commercial = rng.random() < 0.15
        business = f"{last.title()} Holdings" if commercial else None
        created = self.moment()
        city, state = rng.choice(CITIES)
        street = f"{rng.randrange(100, 9999)} {rng.choice(STREETS)}"
        customer = customer_id(index, number)
        technician = rng.choice(technicians)
        batch.add(
            "customers",
            (
                customer, company, owner, technician, f"C-{number:07d}",
                "commercial" if commercial else "residential", "active", first.title(), last.title(), business,
                business or f"{first.title()} {last.title()}", f"{first}.{last}{number}@mail.example",
                f"+1{rng.randrange(200, 999)}{rng.randrange(10**7):07d}", rng.choice(("phone", "sms", "email")),
                street, city, state, f"{rng.randrange(10000, 99999)}", rng.choice(SOURCES),
                "30" if commercial else None, ts(created), ts(created),
            ),
        )  # fmt: skip
        properties = [self.property(batch, company, customer, street, city, state, created, True)]
        if rng.random() < 0.2:
            other = f"{rng.randrange(100, 9999)} {rng.choice(STREETS)}"
            properties.append(self.property(batch, company, customer, other, city, state, created, False))
        jobs = [self.job(batch, company, customer, rng.choice(properties), owner, technicians, created, n)
                for n in range(rng.randrange(0, 9))]  # fmt: skip
        self.communications(batch, company, customer, jobs, owner, created, number)
        self.activities(batch, company, customer, jobs, technicians, created)

    def property(
        self, batch: Batch, company: str, customer: str, street: str, city: str, state: str, at: datetime, primary: bool
    ) -> str:
        rng = self.rng
        prop = self.uuid()
        batch.add(
            "properties",
            (
                prop, company, customer, "Home" if primary else "Rental", "residential", street, city, state,
                f"{rng.randrange(10000, 99999)}", f"{rng.uniform(25, 45):.6f}", f"{rng.uniform(-120, -75):.6f}",
                "true" if primary else "false", str(rng.randrange(800, 5000)), str(rng.randrange(1950, 2024)),
                ts(at), ts(at),
            ),
        )  # fmt: skip
        return prop

    def job(
        self,
        batch: Batch,
        company: str,
        customer: str,
        prop: str,
        owner: str,
        technicians: Sequence[str],
        customer_since: datetime,
        n: int,
    ) -> tuple[str, str, datetime]:
        rng = self.rng
        job = self.uuid()
        technician = rng.choice(technicians)
        created = self.moment(customer_since, self.now)
        start = created + timedelta(days=rng.randrange(0, 21), hours=rng.randrange(8, 17) - created.hour)
        if start > self.now + timedelta(days=FUTURE_DAYS):
            start = self.now + timedelta(days=rng.randrange(1, FUTURE_DAYS))
        minutes = rng.choice((60, 90, 120, 180, 240))
        end = start + timedelta(minutes=minutes)
        actual_start = actual_end = cancelled = None
        if start > self.now:
            status = rng.choice(("scheduled", "scheduled", "scheduled", "dispatched", "in_progress"))
        elif rng.random() < 0.08:
            status, cancelled = "cancelled", start - timedelta(hours=rng.randrange(1, 48))
        else:
            status = "invoiced" if rng.random() < 0.6 else "completed"
            actual_start = start + timedelta(minutes=rng.randrange(-15, 45))
            actual_end = actual_start + timedelta(minutes=minutes + rng.randrange(-30, 60))
        number = f"J-{self.rng.getrandbits(40):012x}"
        amount = rng.randrange(9_000, 250_000)
        batch.add(
            "jobs",
            (
                job, company, customer, prop, technician, owner, number, rng.choice(JOB_TITLES), rng.choice(JOB_TYPES),
                rng.choice(("normal", "normal", "high", "low", "emergency")), status, rng.choice(SOURCES), ts(start),
                ts(end), maybe_ts(actual_start), maybe_ts(actual_end), str(minutes),
                money(amount), maybe_ts(cancelled), ts(created), ts(created),
            ),
        )  # fmt: skip
        visit = "completed" if actual_end else "cancelled" if cancelled else rng.choice(("scheduled", "confirmed"))
        batch.add(
            "schedules",
            (
                self.uuid(), company, customer, prop, job, technician, owner, "appointment", f"Visit {number}",
                ts(start), ts(end), "120", visit, ts(created) if visit == "confirmed" else None, ts(created),
                ts(created),
            ),
        )  # fmt: skip
        if actual_end is not None:
            self.invoice(batch, company, customer, prop, job, owner, actual_end, amount)
        return job, technician, created

    def invoice(
        self, batch: Batch, company: str, customer: str, prop: str, job: str, owner: str, done: datetime, cents: int
    ) -> None:
        rng = self.rng
        invoice = self.uuid()
        tax = round(cents * 0.0825)
        total = cents + tax
        issued = done.date()
        age = (self.now.date() - issued).days
        roll = rng.random()
        if roll < 0.02:
            status, paid = "void", 0
        elif age > 45 or roll < 0.7:
            status, paid = ("paid", total) if roll < 0.93 else ("overdue", 0)
        else:
            status, paid = rng.choice((("sent", 0), ("viewed", 0), ("partially_paid", total // 2)))
        paid_at = done + timedelta(days=rng.randrange(0, 30)) if paid else None
        paid_at = min(paid_at, self.now) if paid_at else None
        batch.add(
            "invoices",
            (
                invoice, company, customer, prop, job, owner, f"I-{rng.getrandbits(40):012x}", status, "USD",
                issued.isoformat(), (issued + timedelta(days=30)).isoformat(), money(cents), "0.0825", money(tax),
                "0.00", money(total), money(paid), money(total - paid), "30", ts(done),
                maybe_ts(paid_at) if status == "paid" else None, ts(done) if status == "void" else None,
                "duplicate" if status == "void" else None, ts(done), ts(done),
            ),
        )  # fmt: skip
        if paid and paid_at:
            method = rng.choice(METHODS)
            card = method in ("credit_card", "debit_card")
            batch.add(
                "payments",
                (
                    self.uuid(), company, customer, invoice, job, owner, f"P-{rng.getrandbits(40):012x}",
                    money(paid), "USD", method, "completed", ts(paid_at), "stripe" if card else "manual",
                    f"pi_{rng.getrandbits(64):016x}" if card else None, rng.choice(CARD_BRANDS) if card else None,
                    f"{rng.randrange(10000):04d}" if card else None, ts(paid_at), ts(paid_at),
                ),
            )  # fmt: skip

    def communications(
        self,
        batch: Batch,
        company: str,
        customer: str,
        jobs: Sequence[tuple[str, str, datetime]],
        owner: str,
        since: datetime,
        number: int,
    ) -> None:
        rng = self.rng
        for _ in range(rng.randrange(1, 6)):  # threads
            job = rng.choice(jobs) if jobs and rng.random() < 0.7 else None
            at = self.moment(job[2] if job else since, self.now)
            starter = parent = self.uuid()
            subject = " ".join(rng.sample(WORDS, 4)).capitalize()
            for reply in range(rng.randrange(1, 5)):
                kind, direction, status = rng.choice(COMM_KINDS)
                message = starter if reply == 0 else self.uuid()
                call = str(rng.randrange(20, 900)) if kind == "phone_call" and status == "answered" else None
                batch.add(
                    "communications",
                    (
                        message, company, customer, job[0] if job else None, owner, None if reply == 0 else parent,
                        starter, "true" if reply == 0 else "false", kind, direction, status, subject,
                        " ".join(rng.choices(WORDS, k=rng.randrange(8, 30))), "office@example.com",
                        f"customer{number}@mail.example", call, ts(at), ts(at), ts(at),
                    ),
                )  # fmt: skip
                parent = message
                at = min(self.now, at + timedelta(minutes=rng.randrange(5, 3000)))

    def activities(
        self,
        batch: Batch,
        company: str,
        customer: str,
        jobs: Sequence[tuple[str, str, datetime]],
        technicians: Sequence[str],
        since: datetime,
    ) -> None:
        rng = self.rng
        for _ in range(rng.randrange(2, 10) + 2 * len(jobs)):
            entity_type, action = rng.choice(ACTIVITY_ACTIONS)
            entity = rng.choice(jobs)[0] if jobs and entity_type == "job" else customer
            at = self.moment(since, self.now)
            batch.add(
                "activities",
                (
                    self.uuid(), company, rng.choice(technicians), customer, "user", entity_type, entity, action,
                    f"{action.replace('.', ' ').replace('_', ' ')}", ts(at), ts(at), ts(at),
                ),
            )  # fmt: skip

    def batches(self, scale: float) -> Iterator[Batch]:
        """The whole dataset, a batch of whole companies at a time (a batch is loaded in table order)."""
        batch = Batch()
        for index, customers in enumerate(company_sizes(scale)):
            self.company(batch, index, customers)
            if batch.rows >= BATCH_ROWS:  # read here, not bound at definition: a test makes batches tiny
                yield batch
                batch = Batch()
        if batch.rows:
            yield batch


# --- load ---------------------------------------------------------------------------------------------

T = TypeVar("T")
_END = object()


@contextmanager
def prefetched(items: Iterable[T], depth: int = 2) -> Iterator[Iterator[T]]:
    """The items, produced by a thread of their own up to `depth` ahead of the caller. An error while
    producing is raised to the caller; a caller that stops early (its own error) stops the producer, which
    would otherwise wait for ever to hand over its next item."""
    ready: queue.Queue[object] = queue.Queue(maxsize=depth)
    stop = threading.Event()
    failure: list[Exception] = []

    def offer(item: object) -> bool:
        while not stop.is_set():
            with suppress(queue.Full):
                ready.put(item, timeout=0.1)
                return True
        return False

    def produce() -> None:
        try:
            for item in items:
                if not offer(item):
                    return
        except Exception as error:
            failure.append(error)
        offer(_END)

    def consume() -> Iterator[T]:
        while (item := ready.get()) is not _END:
            yield cast(T, item)
        if failure:
            raise failure[0]

    producer = threading.Thread(target=produce, name="bench-generate", daemon=True)
    producer.start()
    try:
        yield consume()
    finally:
        stop.set()
        producer.join()


def live_columns(conn: psycopg.Connection[Any], table: str) -> set[str]:
    rows = conn.execute(
        "SELECT attname FROM pg_attribute WHERE attrelid = to_regclass(%s) AND attnum > 0 AND NOT attisdropped",
        (f"public.{table}",),
    ).fetchall()
    return {name for (name,) in rows}


def copy_lines(conn: psycopg.Connection[Any], table: str, lines: list[str], keep: list[int]) -> None:
    """COPY the lines into the columns at positions `keep` (the ones the live table has)."""
    columns = COLUMNS[table]
    names = sql.SQL(", ").join(sql.Identifier(columns[i]) for i in keep)
    statement = sql.SQL("COPY {} ({}) FROM STDIN").format(sql.Identifier("public", table), names)
    whole = len(keep) == len(columns)
    with conn.cursor() as cursor, cursor.copy(statement) as copy:
        chunk: list[str] = []
        for line in lines:
            if not whole:
                fields = line[:-1].split("\t")
                line = "\t".join(fields[i] for i in keep) + "\n"
            chunk.append(line)
            if len(chunk) >= 5000:
                copy.write("".join(chunk))
                chunk.clear()
        if chunk:
            copy.write("".join(chunk))


def load(
    conn: psycopg.Connection[Any],
    scale: float,
    seed: int = 7,
    now: datetime | None = None,
    trust_foreign_keys: bool = False,
) -> dict[str, Any]:
    """Generate and COPY the dataset at `scale` (each batch in its own transaction); return what was loaded.

    The next batch is generated in a thread while the server ingests the current one; a failed COPY or a
    failed batch stops the load with its error. With
    trust_foreign_keys (a superuser only) the load runs with session_replication_role = replica, which
    skips the per-row foreign-key triggers: the rows are valid by construction (tests/integration/
    test_bench.py loads them with every constraint checked), and CHECKs are still checked."""
    generator = Generator(seed, now)
    keep = {}
    for table in TABLES:
        present = live_columns(conn, table)
        if not present:
            raise RuntimeError(f"table public.{table} does not exist: apply the schema (or the before state) first")
        keep[table] = [i for i, column in enumerate(COLUMNS[table]) if column in present]
    counts = dict.fromkeys(TABLES, 0)
    started = time.perf_counter()
    if trust_foreign_keys:
        conn.execute("SET session_replication_role = replica")
    try:
        with prefetched(generator.batches(scale)) as batches:
            for batch in batches:
                with conn.transaction():
                    for table in TABLES:
                        copy_lines(conn, table, batch.lines[table], keep[table])
                        counts[table] += len(batch.lines[table])
    finally:
        if trust_foreign_keys:
            conn.execute("RESET session_replication_role")
    seconds = time.perf_counter() - started
    sizes = company_sizes(scale)
    return {
        "scale": scale,
        "seed": seed,
        "now": generator.now.isoformat(),
        "companies": len(sizes),
        "largest_company_customers": sizes[0],
        "median_company_customers": sorted(sizes)[len(sizes) // 2],
        "rows": counts,
        "total_rows": sum(counts.values()),
        "load_seconds": round(seconds, 2),
        "foreign_keys_checked_during_load": not trust_foreign_keys,
    }


def largest_company(conn: psycopg.Connection[Any]) -> str:
    """The id of company 0 (the largest; its customers' ids are customer_id(0, n))."""
    row = conn.execute("SELECT id::text FROM public.companies WHERE slug = %s", ("bench-0",)).fetchone()
    if row is None:
        raise RuntimeError("no generated company bench-0: load the dataset first")
    return str(row[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dsn", required=True, help="libpq connection string of the database to fill")
    parser.add_argument("--scale", type=float, default=DEFAULT_SCALE, help=f"default {DEFAULT_SCALE} (CI)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--trust-foreign-keys", action="store_true", help="skip per-row FK triggers (superuser)")
    args = parser.parse_args()
    with psycopg.connect(args.dsn, autocommit=True) as conn:
        loaded = load(conn, args.scale, args.seed, trust_foreign_keys=args.trust_foreign_keys)
    for table, count in loaded["rows"].items():
        print(f"{table:<16} {count:>10,}")
    print(f"{'total':<16} {loaded['total_rows']:>10,} rows in {loaded['load_seconds']} s")


if __name__ == "__main__":
    main()
