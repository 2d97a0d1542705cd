-- Demo CRM database for the `sql_query` tool. The executor builds a SQLite file from this
-- script on first start (under its data dir); the binary is never committed.
CREATE TABLE customers (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    email TEXT NOT NULL,
    plan TEXT NOT NULL CHECK (plan IN ('Starter', 'Business', 'Enterprise')),
    country TEXT NOT NULL,
    created_at TEXT NOT NULL
);

CREATE TABLE orders (
    id TEXT PRIMARY KEY,
    customer_id INTEGER NOT NULL REFERENCES customers (id),
    status TEXT NOT NULL CHECK (status IN ('processing', 'shipped', 'delivered', 'cancelled', 'refunded')),
    total_cents INTEGER NOT NULL,
    currency TEXT NOT NULL DEFAULT 'USD',
    ordered_at TEXT NOT NULL
);

CREATE TABLE tickets (
    id TEXT PRIMARY KEY,
    customer_id INTEGER NOT NULL REFERENCES customers (id),
    subject TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('open', 'pending', 'solved')),
    priority TEXT NOT NULL CHECK (priority IN ('low', 'normal', 'high')),
    opened_at TEXT NOT NULL
);

INSERT INTO customers VALUES
    (1, 'Acme Corp', 'ops@acme.example', 'Business', 'US', '2024-02-11'),
    (2, 'Globex', 'it@globex.example', 'Enterprise', 'DE', '2023-09-30'),
    (3, 'Initech', 'billing@initech.example', 'Starter', 'US', '2025-01-05'),
    (4, 'Umbrella', 'admin@umbrella.example', 'Business', 'GB', '2024-06-18'),
    (5, 'Hooli', 'support@hooli.example', 'Starter', 'US', '2025-03-22');

INSERT INTO orders VALUES
    ('O-5001', 1, 'refunded', 12900, 'USD', '2026-10-02'),
    ('O-5002', 2, 'delivered', 249900, 'EUR', '2026-10-05'),
    ('O-5003', 4, 'shipped', 5400, 'GBP', '2026-10-20'),
    ('O-5004', 1, 'processing', 31800, 'USD', '2026-10-28'),
    ('O-5005', 3, 'delivered', 8900, 'USD', '2026-10-12'),
    ('O-5006', 5, 'cancelled', 1900, 'USD', '2026-10-15'),
    ('O-5007', 2, 'shipped', 99900, 'EUR', '2026-10-30');

INSERT INTO tickets VALUES
    ('T-1005', 1, 'Double charge on subscription renewal', 'solved', 'high', '2026-09-14'),
    ('T-1012', 1, 'Order stuck in processing', 'open', 'normal', '2026-10-31'),
    ('T-1006', 2, 'API returns 429 Too Many Requests', 'solved', 'normal', '2026-08-03'),
    ('T-1008', 3, 'Damaged item received', 'solved', 'normal', '2026-10-14'),
    ('T-1004', 4, 'Shipment delayed, tracking not updating', 'solved', 'high', '2026-10-24'),
    ('T-1010', 5, 'Refund requested 40 days after purchase', 'pending', 'low', '2026-10-29');
