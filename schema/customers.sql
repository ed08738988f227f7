-- The seed 000 customer schema (shared/seeds/000_e2aa859c6f417d79.txt), column for column, with only the
-- changes PostgreSQL 15 needs to run it on an empty database:
--   * the seed's inline `INDEX name (cols)` clauses (MySQL syntax) are CREATE INDEX statements after each
--     table, their names prefixed with the table because index names share one namespace per schema
--     (the seed has idx_created_at and idx_status twice); `INDEX ... USING GIN` is CREATE INDEX ... USING GIN;
--   * days_since_last_order is a plain INT: a generated column must be immutable and CURRENT_DATE is not.
--     Whoever computes it writes it; the Firestore copy may be a day apart (rules: tolerance 1).
-- The seed ends its triggers with "-- ... (add for all other tables)": they are added for every table that
-- has an updated_at column.

-- ============================================
-- CORE CUSTOMER TABLES
-- ============================================

-- 1. Main customers table
CREATE TABLE customers (
  id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
  email VARCHAR(255) UNIQUE NOT NULL,
  email_lowercase VARCHAR(255) GENERATED ALWAYS AS (LOWER(email)) STORED,
  phone VARCHAR(50),
  phone_normalized VARCHAR(50), -- E.164 format
  first_name VARCHAR(100),
  last_name VARCHAR(100),
  full_name VARCHAR(200) GENERATED ALWAYS AS (first_name || ' ' || last_name) STORED,
  
  -- Status and type
  status VARCHAR(20) DEFAULT 'active' CHECK (status IN ('active', 'inactive', 'vip', 'blocked', 'pending')),
  customer_type VARCHAR(20) DEFAULT 'registered' CHECK (customer_type IN ('guest', 'registered', 'wholesale', 'affiliate')),
  
  -- Timestamps
  created_at TIMESTAMP WITH TIME ZONE DEFAULT CURRENT_TIMESTAMP,
  updated_at TIMESTAMP WITH TIME ZONE DEFAULT CURRENT_TIMESTAMP,
  deleted_at TIMESTAMP WITH TIME ZONE, -- Soft delete
  last_active_at TIMESTAMP WITH TIME ZONE,
  
  -- Metadata
  tags TEXT[], -- Array of tags
  notes TEXT,
  internal_notes TEXT, -- Staff only notes
  custom_attributes JSONB DEFAULT '{}'
);
CREATE INDEX idx_customers_email_lowercase ON customers (email_lowercase);
CREATE INDEX idx_customers_phone_normalized ON customers (phone_normalized);
CREATE INDEX idx_customers_status ON customers (status);
CREATE INDEX idx_customers_created_at ON customers (created_at DESC);
CREATE INDEX idx_customers_updated_at ON customers (updated_at DESC);
CREATE INDEX idx_customers_last_active ON customers (last_active_at DESC);
CREATE INDEX idx_customers_deleted_at ON customers (deleted_at);
CREATE INDEX idx_customers_tags ON customers USING GIN (tags);
CREATE INDEX idx_customers_custom_attributes ON customers USING GIN (custom_attributes);


-- 2. Customer sources (tracks all systems customer exists in)
CREATE TABLE customer_sources (
  id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
  customer_id UUID NOT NULL REFERENCES customers(id) ON DELETE CASCADE,
  source VARCHAR(50) NOT NULL, -- 'shopify', 'klaviyo', 'manual', etc.
  external_id VARCHAR(255) NOT NULL, -- ID in external system
  
  -- Source-specific data
  source_data JSONB DEFAULT '{}',
  
  -- Sync tracking
  first_synced_at TIMESTAMP WITH TIME ZONE DEFAULT CURRENT_TIMESTAMP,
  last_synced_at TIMESTAMP WITH TIME ZONE DEFAULT CURRENT_TIMESTAMP,
  sync_status VARCHAR(20) DEFAULT 'active',
  sync_errors JSONB,
  
  -- Timestamps
  created_at TIMESTAMP WITH TIME ZONE DEFAULT CURRENT_TIMESTAMP,
  updated_at TIMESTAMP WITH TIME ZONE DEFAULT CURRENT_TIMESTAMP,
  
  UNIQUE(source, external_id)
);
CREATE INDEX idx_customer_sources ON customer_sources (customer_id);
CREATE INDEX idx_customer_sources_source_external ON customer_sources (source, external_id);


-- 3. Customer metrics (aggregated data)
CREATE TABLE customer_metrics (
  customer_id UUID PRIMARY KEY REFERENCES customers(id) ON DELETE CASCADE,
  
  -- Order metrics
  total_orders INT DEFAULT 0,
  completed_orders INT DEFAULT 0,
  cancelled_orders INT DEFAULT 0,
  returned_orders INT DEFAULT 0,
  
  -- Financial metrics
  total_spent DECIMAL(12,2) DEFAULT 0,
  total_refunded DECIMAL(12,2) DEFAULT 0,
  net_revenue DECIMAL(12,2) DEFAULT 0,
  average_order_value DECIMAL(10,2) DEFAULT 0,
  lifetime_value DECIMAL(12,2) DEFAULT 0,
  
  -- Product metrics
  total_items_purchased INT DEFAULT 0,
  favorite_category VARCHAR(100),
  favorite_brand VARCHAR(100),
  
  -- Time-based metrics
  first_order_date DATE,
  last_order_date DATE,
  days_since_last_order INT, -- seed: GENERATED ALWAYS AS (CURRENT_DATE - last_order_date): not allowed, see the top
  
  -- Engagement metrics
  email_opens INT DEFAULT 0,
  email_clicks INT DEFAULT 0,
  email_open_rate DECIMAL(5,2),
  email_click_rate DECIMAL(5,2),
  
  -- Predictive metrics
  churn_probability DECIMAL(3,2), -- 0.00 to 1.00
  predicted_next_order_date DATE,
  predicted_lifetime_value DECIMAL(12,2),
  propensity_score DECIMAL(3,2), -- 0.00 to 1.00
  
  -- Timestamps
  calculated_at TIMESTAMP WITH TIME ZONE DEFAULT CURRENT_TIMESTAMP,
  updated_at TIMESTAMP WITH TIME ZONE DEFAULT CURRENT_TIMESTAMP
);
CREATE INDEX idx_customer_metrics_total_spent ON customer_metrics (total_spent DESC);
CREATE INDEX idx_customer_metrics_lifetime_value ON customer_metrics (lifetime_value DESC);
CREATE INDEX idx_customer_metrics_last_order_date ON customer_metrics (last_order_date DESC);
CREATE INDEX idx_customer_metrics_churn_probability ON customer_metrics (churn_probability DESC);


-- 4. Customer demographics (enriched data)
CREATE TABLE customer_demographics (
  customer_id UUID PRIMARY KEY REFERENCES customers(id) ON DELETE CASCADE,
  
  -- Basic demographics
  gender VARCHAR(20),
  age INT,
  age_range VARCHAR(20), -- '18-24', '25-34', etc.
  birth_date DATE,
  birth_year INT,
  
  -- Location demographics
  income_range VARCHAR(50), -- '50k-75k', '75k-100k', etc.
  household_income_percentile INT, -- 0-100
  education_level VARCHAR(50),
  occupation VARCHAR(100),
  industry VARCHAR(100),
  job_title VARCHAR(100),
  company VARCHAR(255),
  
  -- Lifestyle
  marital_status VARCHAR(30),
  has_children BOOLEAN,
  number_of_children INT,
  home_ownership_status VARCHAR(30), -- 'owner', 'renter', 'unknown'
  dwelling_type VARCHAR(30), -- 'single_family', 'apartment', etc.
  
  -- Psychographics
  interests TEXT[],
  hobbies TEXT[],
  preferred_brands TEXT[],
  lifestyle_segment VARCHAR(100),
  
  -- Social media
  social_profiles JSONB DEFAULT '{}', -- {twitter: handle, instagram: handle, etc}
  social_influence_score INT, -- 0-100
  
  -- Data sources
  demographic_sources JSONB DEFAULT '{}', -- {clearbit: {}, fullcontact: {}}
  confidence_score DECIMAL(3,2), -- 0.00 to 1.00
  
  -- Timestamps
  enriched_at TIMESTAMP WITH TIME ZONE DEFAULT CURRENT_TIMESTAMP,
  updated_at TIMESTAMP WITH TIME ZONE DEFAULT CURRENT_TIMESTAMP
);
CREATE INDEX idx_customer_demographics_gender ON customer_demographics (gender);
CREATE INDEX idx_customer_demographics_age_range ON customer_demographics (age_range);
CREATE INDEX idx_customer_demographics_income_range ON customer_demographics (income_range);


-- 5. Customer addresses
CREATE TABLE customer_addresses (
  id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
  customer_id UUID NOT NULL REFERENCES customers(id) ON DELETE CASCADE,
  
  -- Address type
  address_type VARCHAR(20) DEFAULT 'shipping', -- 'billing', 'shipping', 'both'
  is_default BOOLEAN DEFAULT FALSE,
  label VARCHAR(50), -- 'Home', 'Work', etc.
  
  -- Name
  first_name VARCHAR(100),
  last_name VARCHAR(100),
  company VARCHAR(255),
  
  -- Address
  address_line1 VARCHAR(255) NOT NULL,
  address_line2 VARCHAR(255),
  city VARCHAR(100) NOT NULL,
  state_province VARCHAR(100),
  state_province_code VARCHAR(10),
  country VARCHAR(100) NOT NULL,
  country_code VARCHAR(2) NOT NULL,
  postal_code VARCHAR(20),
  
  -- Contact
  phone VARCHAR(50),
  email VARCHAR(255),
  
  -- Geolocation
  latitude DECIMAL(10,8),
  longitude DECIMAL(11,8),
  timezone VARCHAR(50),
  
  -- Validation
  is_validated BOOLEAN DEFAULT FALSE,
  validation_provider VARCHAR(50),
  validation_result JSONB,
  validated_at TIMESTAMP WITH TIME ZONE,
  
  -- Demographics from address
  neighborhood_income_level VARCHAR(50),
  neighborhood_median_income DECIMAL(10,2),
  property_type VARCHAR(50),
  property_value_estimate DECIMAL(12,2),
  
  -- Timestamps
  created_at TIMESTAMP WITH TIME ZONE DEFAULT CURRENT_TIMESTAMP,
  updated_at TIMESTAMP WITH TIME ZONE DEFAULT CURRENT_TIMESTAMP,
  last_used_at TIMESTAMP WITH TIME ZONE
);
CREATE INDEX idx_customer_addresses ON customer_addresses (customer_id);
CREATE INDEX idx_customer_addresses_default_address ON customer_addresses (customer_id, is_default);
CREATE INDEX idx_customer_addresses_country_code ON customer_addresses (country_code);
CREATE INDEX idx_customer_addresses_postal_code ON customer_addresses (postal_code);


-- 6. Customer IP addresses and sessions
CREATE TABLE customer_ip_addresses (
  id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
  customer_id UUID NOT NULL REFERENCES customers(id) ON DELETE CASCADE,
  
  -- IP Information
  ip_address INET NOT NULL,
  ip_version INT DEFAULT 4, -- 4 or 6
  
  -- Geolocation
  country VARCHAR(100),
  country_code VARCHAR(2),
  region VARCHAR(100),
  region_code VARCHAR(10),
  city VARCHAR(100),
  postal_code VARCHAR(20),
  latitude DECIMAL(10,8),
  longitude DECIMAL(11,8),
  timezone VARCHAR(50),
  
  -- ISP Information
  isp VARCHAR(255),
  organization VARCHAR(255),
  asn INT,
  as_name VARCHAR(255),
  connection_type VARCHAR(50), -- 'residential', 'corporate', 'mobile', 'datacenter'
  
  -- Risk indicators
  is_vpn BOOLEAN DEFAULT FALSE,
  is_proxy BOOLEAN DEFAULT FALSE,
  is_tor BOOLEAN DEFAULT FALSE,
  is_relay BOOLEAN DEFAULT FALSE,
  is_hosting BOOLEAN DEFAULT FALSE,
  is_mobile BOOLEAN DEFAULT FALSE,
  
  -- Device information
  user_agent TEXT,
  browser VARCHAR(50),
  browser_version VARCHAR(20),
  operating_system VARCHAR(50),
  os_version VARCHAR(20),
  device_type VARCHAR(50), -- 'desktop', 'mobile', 'tablet'
  device_brand VARCHAR(50),
  device_model VARCHAR(50),
  
  -- Usage tracking
  first_seen_at TIMESTAMP WITH TIME ZONE DEFAULT CURRENT_TIMESTAMP,
  last_seen_at TIMESTAMP WITH TIME ZONE DEFAULT CURRENT_TIMESTAMP,
  total_sessions INT DEFAULT 1,
  total_page_views INT DEFAULT 0,
  total_events INT DEFAULT 0,
  
  -- Timestamps
  created_at TIMESTAMP WITH TIME ZONE DEFAULT CURRENT_TIMESTAMP,
  updated_at TIMESTAMP WITH TIME ZONE DEFAULT CURRENT_TIMESTAMP,
  
  UNIQUE(customer_id, ip_address)
);
CREATE INDEX idx_customer_ip_addresses_customer_ips ON customer_ip_addresses (customer_id);
CREATE INDEX idx_customer_ip_addresses_ip_address ON customer_ip_addresses (ip_address);
CREATE INDEX idx_customer_ip_addresses_last_seen ON customer_ip_addresses (last_seen_at DESC);
CREATE INDEX idx_customer_ip_addresses_risk_flags ON customer_ip_addresses (is_vpn, is_proxy, is_tor);


-- 7. Customer risk assessment
CREATE TABLE customer_risk_assessments (
  id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
  customer_id UUID NOT NULL REFERENCES customers(id) ON DELETE CASCADE,
  
  -- Overall risk
  risk_score INT DEFAULT 0 CHECK (risk_score >= 0 AND risk_score <= 100),
  risk_level VARCHAR(20) DEFAULT 'low' CHECK (risk_level IN ('low', 'medium', 'high', 'critical')),
  
  -- Risk factors
  email_risk_score INT DEFAULT 0,
  ip_risk_score INT DEFAULT 0,
  address_risk_score INT DEFAULT 0,
  behavior_risk_score INT DEFAULT 0,
  payment_risk_score INT DEFAULT 0,
  
  -- Fraud indicators
  is_disposable_email BOOLEAN DEFAULT FALSE,
  is_free_email BOOLEAN DEFAULT FALSE,
  email_domain_age_days INT,
  
  has_multiple_accounts BOOLEAN DEFAULT FALSE,
  related_account_ids UUID[],
  
  uses_vpn_frequently BOOLEAN DEFAULT FALSE,
  multiple_ip_countries BOOLEAN DEFAULT FALSE,
  ip_country_count INT DEFAULT 1,
  
  billing_shipping_mismatch BOOLEAN DEFAULT FALSE,
  high_risk_country BOOLEAN DEFAULT FALSE,
  
  -- Behavioral flags
  rapid_order_velocity BOOLEAN DEFAULT FALSE,
  unusual_purchase_pattern BOOLEAN DEFAULT FALSE,
  high_return_rate BOOLEAN DEFAULT FALSE,
  
  -- Payment flags
  payment_failures INT DEFAULT 0,
  chargebacks INT DEFAULT 0,
  different_payment_methods INT DEFAULT 1,
  
  -- External assessments
  sift_score INT,
  riskified_score INT,
  maxmind_risk_score INT,
  
  -- Action taken
  is_blocked BOOLEAN DEFAULT FALSE,
  blocked_reason TEXT,
  blocked_at TIMESTAMP WITH TIME ZONE,
  blocked_by VARCHAR(255),
  
  requires_review BOOLEAN DEFAULT FALSE,
  review_notes TEXT,
  reviewed_at TIMESTAMP WITH TIME ZONE,
  reviewed_by VARCHAR(255),
  
  -- Timestamps
  assessed_at TIMESTAMP WITH TIME ZONE DEFAULT CURRENT_TIMESTAMP,
  updated_at TIMESTAMP WITH TIME ZONE DEFAULT CURRENT_TIMESTAMP,
  next_assessment_at TIMESTAMP WITH TIME ZONE
);
CREATE INDEX idx_customer_risk_assessments_customer_risk ON customer_risk_assessments (customer_id);
CREATE INDEX idx_customer_risk_assessments_risk_score ON customer_risk_assessments (risk_score DESC);
CREATE INDEX idx_customer_risk_assessments_risk_level ON customer_risk_assessments (risk_level);
CREATE INDEX idx_customer_risk_assessments_blocked ON customer_risk_assessments (is_blocked);
CREATE INDEX idx_customer_risk_assessments_requires_review ON customer_risk_assessments (requires_review);


-- 8. Customer activities/events
CREATE TABLE customer_activities (
  id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
  customer_id UUID NOT NULL REFERENCES customers(id) ON DELETE CASCADE,
  
  -- Event details
  activity_type VARCHAR(50) NOT NULL, -- 'page_view', 'product_view', 'add_to_cart', etc.
  activity_category VARCHAR(50), -- 'browsing', 'shopping', 'account', etc.
  
  -- Event data
  event_data JSONB DEFAULT '{}',
  
  -- Context
  ip_address INET,
  session_id VARCHAR(255),
  user_agent TEXT,
  referrer TEXT,
  utm_source VARCHAR(100),
  utm_medium VARCHAR(100),
  utm_campaign VARCHAR(100),
  
  -- Location
  country_code VARCHAR(2),
  region VARCHAR(100),
  city VARCHAR(100),
  
  -- Timestamps
  occurred_at TIMESTAMP WITH TIME ZONE DEFAULT CURRENT_TIMESTAMP,
  created_at TIMESTAMP WITH TIME ZONE DEFAULT CURRENT_TIMESTAMP
);
CREATE INDEX idx_customer_activities ON customer_activities (customer_id, occurred_at DESC);
CREATE INDEX idx_customer_activities_activity_type ON customer_activities (activity_type);
CREATE INDEX idx_customer_activities_session ON customer_activities (session_id);
CREATE INDEX idx_customer_activities_occurred_at ON customer_activities (occurred_at DESC);


-- 9. Customer engagement
CREATE TABLE customer_engagement (
  customer_id UUID PRIMARY KEY REFERENCES customers(id) ON DELETE CASCADE,
  
  -- Email engagement
  email_consent BOOLEAN DEFAULT FALSE,
  email_consent_date TIMESTAMP WITH TIME ZONE,
  email_unsubscribe_date TIMESTAMP WITH TIME ZONE,
  total_emails_sent INT DEFAULT 0,
  total_emails_opened INT DEFAULT 0,
  total_emails_clicked INT DEFAULT 0,
  total_emails_bounced INT DEFAULT 0,
  last_email_open_date TIMESTAMP WITH TIME ZONE,
  last_email_click_date TIMESTAMP WITH TIME ZONE,
  email_engagement_score DECIMAL(3,2), -- 0.00 to 1.00
  
  -- SMS engagement
  sms_consent BOOLEAN DEFAULT FALSE,
  sms_consent_date TIMESTAMP WITH TIME ZONE,
  sms_unsubscribe_date TIMESTAMP WITH TIME ZONE,
  total_sms_sent INT DEFAULT 0,
  total_sms_clicked INT DEFAULT 0,
  last_sms_click_date TIMESTAMP WITH TIME ZONE,
  sms_engagement_score DECIMAL(3,2),
  
  -- Push notifications
  push_consent BOOLEAN DEFAULT FALSE,
  push_tokens JSONB DEFAULT '[]',
  
  -- Web engagement
  total_sessions INT DEFAULT 0,
  total_page_views INT DEFAULT 0,
  average_session_duration INT, -- seconds
  bounce_rate DECIMAL(5,2),
  
  -- App engagement (if applicable)
  app_installed BOOLEAN DEFAULT FALSE,
  app_version VARCHAR(20),
  app_last_opened TIMESTAMP WITH TIME ZONE,
  
  -- Loyalty program
  loyalty_member BOOLEAN DEFAULT FALSE,
  loyalty_tier VARCHAR(50),
  loyalty_points INT DEFAULT 0,
  loyalty_lifetime_points INT DEFAULT 0,
  
  -- Reviews and feedback
  total_reviews INT DEFAULT 0,
  average_review_rating DECIMAL(2,1),
  nps_score INT,
  
  -- Timestamps
  calculated_at TIMESTAMP WITH TIME ZONE DEFAULT CURRENT_TIMESTAMP,
  updated_at TIMESTAMP WITH TIME ZONE DEFAULT CURRENT_TIMESTAMP
);
CREATE INDEX idx_customer_engagement_email_engagement ON customer_engagement (email_engagement_score DESC);
CREATE INDEX idx_customer_engagement_loyalty_member ON customer_engagement (loyalty_member);
CREATE INDEX idx_customer_engagement_loyalty_tier ON customer_engagement (loyalty_tier);


-- 10. Customer segments (for grouping)
CREATE TABLE customer_segments (
  id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
  customer_id UUID NOT NULL REFERENCES customers(id) ON DELETE CASCADE,
  segment_type VARCHAR(50) NOT NULL, -- 'behavioral', 'demographic', 'value', 'custom'
  segment_name VARCHAR(100) NOT NULL,
  segment_value VARCHAR(255),
  
  -- Segment metadata
  confidence_score DECIMAL(3,2),
  assigned_by VARCHAR(50), -- 'system', 'manual', 'ml_model'
  
  -- Timestamps
  assigned_at TIMESTAMP WITH TIME ZONE DEFAULT CURRENT_TIMESTAMP,
  expires_at TIMESTAMP WITH TIME ZONE
);
CREATE INDEX idx_customer_segments ON customer_segments (customer_id);
CREATE INDEX idx_customer_segments_segment_type_name ON customer_segments (segment_type, segment_name);


-- ============================================
-- UTILITY TABLES
-- ============================================

-- 11. Sync logs for dual-database consistency
CREATE TABLE sync_logs (
  id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
  entity_type VARCHAR(50) NOT NULL, -- 'customer', 'order', etc.
  entity_id UUID NOT NULL,
  operation VARCHAR(20) NOT NULL, -- 'create', 'update', 'delete'
  
  -- Sync status
  postgres_status VARCHAR(20) DEFAULT 'pending',
  firestore_status VARCHAR(20) DEFAULT 'pending',
  
  -- Data
  data_snapshot JSONB,
  
  -- Error handling
  error_message TEXT,
  retry_count INT DEFAULT 0,
  
  -- Timestamps
  created_at TIMESTAMP WITH TIME ZONE DEFAULT CURRENT_TIMESTAMP,
  completed_at TIMESTAMP WITH TIME ZONE
);
CREATE INDEX idx_sync_logs_entity ON sync_logs (entity_type, entity_id);
CREATE INDEX idx_sync_logs_status ON sync_logs (postgres_status, firestore_status);
CREATE INDEX idx_sync_logs_created_at ON sync_logs (created_at DESC);


-- ============================================
-- TRIGGERS FOR UPDATED_AT
-- ============================================

CREATE OR REPLACE FUNCTION update_updated_at_column()
RETURNS TRIGGER AS $$
BEGIN
  NEW.updated_at = CURRENT_TIMESTAMP;
  RETURN NEW;
END;
$$ language 'plpgsql';

-- Apply trigger to all tables with updated_at
CREATE TRIGGER update_customers_updated_at BEFORE UPDATE ON customers
  FOR EACH ROW EXECUTE FUNCTION update_updated_at_column();

CREATE TRIGGER update_customer_sources_updated_at BEFORE UPDATE ON customer_sources
  FOR EACH ROW EXECUTE FUNCTION update_updated_at_column();

CREATE TRIGGER update_customer_metrics_updated_at BEFORE UPDATE ON customer_metrics
  FOR EACH ROW EXECUTE FUNCTION update_updated_at_column();

CREATE TRIGGER update_customer_demographics_updated_at BEFORE UPDATE ON customer_demographics
  FOR EACH ROW EXECUTE FUNCTION update_updated_at_column();

CREATE TRIGGER update_customer_addresses_updated_at BEFORE UPDATE ON customer_addresses
  FOR EACH ROW EXECUTE FUNCTION update_updated_at_column();

CREATE TRIGGER update_customer_ip_addresses_updated_at BEFORE UPDATE ON customer_ip_addresses
  FOR EACH ROW EXECUTE FUNCTION update_updated_at_column();

CREATE TRIGGER update_customer_risk_assessments_updated_at BEFORE UPDATE ON customer_risk_assessments
  FOR EACH ROW EXECUTE FUNCTION update_updated_at_column();

CREATE TRIGGER update_customer_engagement_updated_at BEFORE UPDATE ON customer_engagement
  FOR EACH ROW EXECUTE FUNCTION update_updated_at_column();
