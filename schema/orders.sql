-- Orders (seed 001_8992cd9ddf8b3a0e.txt): the normalized Postgres copy of the Firestore `orders/{orderId}`
-- documents that Shopify webhooks write. Firestore is the source of truth (rules/orders.yaml).
-- Designed from the seed's plan (phase 1.2): the order's scalar fields and its `customer` map in `orders`,
-- each array of maps in a child table, both addresses in one `order_addresses` table with an address_type.
-- Shopify IDs are 64-bit integers; the Firestore document ID is the order ID's text. Money is NUMERIC(12,2)
-- here and a string ("12.50") in the webhook payload. Columns the rules do not map (synced_at,
-- internal_note, warehouse...) belong to Postgres alone.
-- The seed's order_returns table is left out: a Shopify order payload has no returns array to compare.

CREATE TABLE orders (
  id                      BIGINT PRIMARY KEY,          -- Shopify order id = the Firestore document ID
  order_number            INTEGER NOT NULL,
  name                    VARCHAR(50),                 -- "#1001"
  email                   VARCHAR(255),
  phone                   VARCHAR(50),
  financial_status        VARCHAR(30),
  fulfillment_status      VARCHAR(30),
  currency                VARCHAR(3),
  current_total_price     NUMERIC(12,2),
  current_subtotal_price  NUMERIC(12,2),
  current_total_tax       NUMERIC(12,2),
  current_total_discounts NUMERIC(12,2),
  total_price             NUMERIC(12,2),
  subtotal_price          NUMERIC(12,2),
  total_tax               NUMERIC(12,2),
  total_discounts         NUMERIC(12,2),
  total_weight            INTEGER,
  taxes_included          BOOLEAN,
  confirmed               BOOLEAN,
  test                    BOOLEAN,
  buyer_accepts_marketing BOOLEAN,
  source_name             VARCHAR(50),
  payment_gateway_names   TEXT[],
  payment_terms           JSONB,
  tags                    TEXT,                        -- Shopify's comma-separated tag string
  note                    TEXT,
  note_attributes         JSONB,
  -- the `customer` map (customer relationship fields, seed 1.2)
  customer_id             BIGINT,                      -- Shopify customer id
  customer_email          VARCHAR(255),
  customer_first_name     VARCHAR(100),
  customer_last_name      VARCHAR(100),
  customer_orders_count   INTEGER,
  cancel_reason           VARCHAR(30),
  cancelled_at            TIMESTAMPTZ,
  closed_at               TIMESTAMPTZ,
  processed_at            TIMESTAMPTZ,
  created_at              TIMESTAMPTZ NOT NULL,
  updated_at              TIMESTAMPTZ,
  synced_at               TIMESTAMPTZ DEFAULT now(),   -- Postgres only: when the sync last wrote the row
  internal_note           TEXT                         -- Postgres only
);
CREATE INDEX idx_orders_customer_email ON orders (customer_email);
CREATE INDEX idx_orders_customer_id ON orders (customer_id);
CREATE INDEX idx_orders_order_number ON orders (order_number);
CREATE INDEX idx_orders_created_at ON orders (created_at);
CREATE INDEX idx_orders_financial_status ON orders (financial_status);
CREATE INDEX idx_orders_fulfillment_status ON orders (fulfillment_status);

CREATE TABLE order_line_items (
  order_id             BIGINT NOT NULL REFERENCES orders(id) ON DELETE CASCADE,
  id                   BIGINT NOT NULL,
  product_id           BIGINT,
  variant_id           BIGINT,
  title                VARCHAR(255),
  variant_title        VARCHAR(255),
  sku                  VARCHAR(100),
  vendor               VARCHAR(100),
  quantity             INTEGER NOT NULL,
  price                NUMERIC(12,2),
  total_discount       NUMERIC(12,2),
  grams                INTEGER,
  requires_shipping    BOOLEAN,
  taxable              BOOLEAN,
  gift_card            BOOLEAN,
  fulfillment_status   VARCHAR(30),
  fulfillable_quantity INTEGER,
  supplier             VARCHAR(100),                   -- vendor fields (seed 1.2)
  supplier_sku         VARCHAR(100),
  supply_price         NUMERIC(12,2),
  handling_cost        NUMERIC(12,2),
  tax_lines            JSONB,
  discount_allocations JSONB,
  properties           JSONB,
  warehouse            VARCHAR(50),                    -- Postgres only
  PRIMARY KEY (order_id, id)
);

CREATE TABLE order_addresses (
  id            BIGSERIAL PRIMARY KEY,
  order_id      BIGINT NOT NULL REFERENCES orders(id) ON DELETE CASCADE,
  address_type  VARCHAR(20) NOT NULL CHECK (address_type IN ('billing', 'shipping', 'customer_default')),
  first_name    VARCHAR(100),
  last_name     VARCHAR(100),
  name          VARCHAR(200),
  company       VARCHAR(200),
  address1      VARCHAR(255),
  address2      VARCHAR(255),
  city          VARCHAR(100),
  province      VARCHAR(100),
  province_code VARCHAR(10),
  country       VARCHAR(100),
  country_code  VARCHAR(2),
  zip           VARCHAR(20),
  phone         VARCHAR(50),
  latitude      NUMERIC(10,7),
  longitude     NUMERIC(10,7),
  UNIQUE (order_id, address_type)
);

CREATE TABLE order_shipping_lines (
  order_id           BIGINT NOT NULL REFERENCES orders(id) ON DELETE CASCADE,
  id                 BIGINT NOT NULL,
  title              VARCHAR(255),
  code               VARCHAR(100),
  source             VARCHAR(50),
  carrier_identifier VARCHAR(100),
  price              NUMERIC(12,2),
  discounted_price   NUMERIC(12,2),
  tax_lines          JSONB,
  PRIMARY KEY (order_id, id)
);

CREATE TABLE order_discount_applications (
  id                BIGSERIAL PRIMARY KEY,
  order_id          BIGINT NOT NULL REFERENCES orders(id) ON DELETE CASCADE,
  type              VARCHAR(30) NOT NULL,              -- discount_code, manual, script, automatic
  title             VARCHAR(255) NOT NULL,
  description       TEXT,
  value             NUMERIC(12,2),
  value_type        VARCHAR(20),                       -- percentage, fixed_amount
  allocation_method VARCHAR(20),                       -- across, each, one
  target_selection  VARCHAR(20),                       -- all, entitled, explicit
  target_type       VARCHAR(20),                       -- line_item, shipping_line
  UNIQUE (order_id, type, title)
);

CREATE TABLE order_discount_codes (
  order_id BIGINT NOT NULL REFERENCES orders(id) ON DELETE CASCADE,
  code     VARCHAR(100) NOT NULL,
  amount   NUMERIC(12,2),
  type     VARCHAR(30),
  PRIMARY KEY (order_id, code)
);

CREATE TABLE order_tax_lines (
  id             BIGSERIAL PRIMARY KEY,
  order_id       BIGINT NOT NULL REFERENCES orders(id) ON DELETE CASCADE,
  title          VARCHAR(100) NOT NULL,
  rate           NUMERIC(8,6) NOT NULL,
  price          NUMERIC(12,2),
  channel_liable BOOLEAN,
  UNIQUE (order_id, title, rate)
);

CREATE TABLE order_refunds (
  order_id          BIGINT NOT NULL REFERENCES orders(id) ON DELETE CASCADE,
  id                BIGINT NOT NULL,
  note              TEXT,
  restock           BOOLEAN,
  user_id           BIGINT,
  refund_line_items JSONB,
  transactions      JSONB,
  order_adjustments JSONB,
  created_at        TIMESTAMPTZ,
  processed_at      TIMESTAMPTZ,
  PRIMARY KEY (order_id, id)
);
