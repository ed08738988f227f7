-- The service catalog (seed 002_79d4b6b4fc6ed0be.txt, section 3), as the seed writes it, plus one column per
-- table: `firestore_id`, the Firestore document ID ("cat_plumbing", "service_faucet_repair", "tier_basic_repair",
-- "pkg_svc_001"), UNIQUE NOT NULL. The primary keys and foreign keys stay UUIDs; the rules compare a foreign key
-- with the referenced row's firestore_id (`references:`), and a subcollection's parent through the parent's
-- firestore_id (`parent_references:`).

CREATE TABLE service_categories (
    id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    firestore_id VARCHAR(100) NOT NULL UNIQUE, -- the Firestore document ID
    name VARCHAR(100) NOT NULL UNIQUE,
    slug VARCHAR(100) NOT NULL UNIQUE,
    description TEXT,
    parent_category_id UUID REFERENCES service_categories(id),
    icon_url VARCHAR(500),
    sort_order INTEGER DEFAULT 0,
    is_active BOOLEAN DEFAULT true,
    seo_title VARCHAR(200),
    seo_description TEXT,
    created_at TIMESTAMP WITH TIME ZONE DEFAULT CURRENT_TIMESTAMP,
    updated_at TIMESTAMP WITH TIME ZONE DEFAULT CURRENT_TIMESTAMP
);

CREATE INDEX idx_service_categories_parent ON service_categories(parent_category_id);
CREATE INDEX idx_service_categories_active ON service_categories(is_active);
CREATE INDEX idx_service_categories_sort ON service_categories(sort_order);

CREATE TABLE services (
    id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    firestore_id VARCHAR(100) NOT NULL UNIQUE, -- the Firestore document ID
    category_id UUID NOT NULL REFERENCES service_categories(id),
    
    -- Basic Information
    name VARCHAR(200) NOT NULL,
    slug VARCHAR(200) NOT NULL UNIQUE,
    short_description VARCHAR(500),
    full_description TEXT,
    
    -- Pricing Information
    pricing_model VARCHAR(50) NOT NULL, -- 'fixed', 'hourly', 'estimate', 'tiered'
    base_price DECIMAL(10,2),
    hourly_rate DECIMAL(10,2),
    minimum_charge DECIMAL(10,2),
    maximum_charge DECIMAL(10,2),
    currency VARCHAR(3) DEFAULT 'USD',
    
    -- Service Details
    estimated_duration_minutes INTEGER,
    difficulty_level INTEGER CHECK (difficulty_level BETWEEN 1 AND 5),
    requires_permit BOOLEAN DEFAULT false,
    emergency_service BOOLEAN DEFAULT false,
    warranty_period_days INTEGER DEFAULT 90,
    
    -- Availability
    is_active BOOLEAN DEFAULT true,
    is_featured BOOLEAN DEFAULT false,
    availability_zones TEXT[], -- Geographic areas where service is available
    seasonal_availability JSONB, -- Specific seasons/months when available
    
    -- Requirements and Dependencies
    required_skills TEXT[],
    required_tools TEXT[],
    required_materials TEXT[],
    prerequisites TEXT[], -- Other services that must be completed first
    
    -- SEO and Marketing
    seo_title VARCHAR(200),
    seo_description TEXT,
    keywords TEXT[],
    image_urls TEXT[],
    
    -- Metadata
    metadata JSONB,
    created_at TIMESTAMP WITH TIME ZONE DEFAULT CURRENT_TIMESTAMP,
    updated_at TIMESTAMP WITH TIME ZONE DEFAULT CURRENT_TIMESTAMP,
    created_by VARCHAR(50) DEFAULT 'system',
    updated_by VARCHAR(50) DEFAULT 'system',
    
    CHECK (pricing_model IN ('fixed', 'hourly', 'estimate', 'tiered')),
    CHECK (base_price >= 0 OR base_price IS NULL),
    CHECK (hourly_rate >= 0 OR hourly_rate IS NULL),
    CHECK (minimum_charge >= 0 OR minimum_charge IS NULL),
    CHECK (estimated_duration_minutes > 0 OR estimated_duration_minutes IS NULL)
);

-- Indexes for services
CREATE INDEX idx_services_category ON services(category_id);
CREATE INDEX idx_services_active ON services(is_active);
CREATE INDEX idx_services_featured ON services(is_featured);
CREATE INDEX idx_services_emergency ON services(emergency_service);
CREATE INDEX idx_services_pricing_model ON services(pricing_model);
CREATE INDEX idx_services_difficulty ON services(difficulty_level);
CREATE INDEX idx_services_availability_zones ON services USING GIN(availability_zones);
CREATE INDEX idx_services_keywords ON services USING GIN(keywords);

CREATE TABLE service_pricing_tiers (
    id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    firestore_id VARCHAR(100) NOT NULL UNIQUE, -- the Firestore document ID
    service_id UUID NOT NULL REFERENCES services(id) ON DELETE CASCADE,
    tier_name VARCHAR(100) NOT NULL,
    tier_description TEXT,
    min_quantity INTEGER DEFAULT 1,
    max_quantity INTEGER,
    price DECIMAL(10,2) NOT NULL,
    unit VARCHAR(50), -- 'each', 'hour', 'sqft', 'linear_ft'
    is_default BOOLEAN DEFAULT false,
    sort_order INTEGER DEFAULT 0,
    created_at TIMESTAMP WITH TIME ZONE DEFAULT CURRENT_TIMESTAMP,
    
    CHECK (price >= 0),
    CHECK (min_quantity >= 0),
    CHECK (max_quantity IS NULL OR max_quantity >= min_quantity)
);

CREATE INDEX idx_pricing_tiers_service ON service_pricing_tiers(service_id);
CREATE INDEX idx_pricing_tiers_default ON service_pricing_tiers(is_default);

CREATE TABLE service_packages (
    id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    firestore_id VARCHAR(100) NOT NULL UNIQUE, -- the Firestore document ID
    name VARCHAR(200) NOT NULL,
    slug VARCHAR(200) NOT NULL UNIQUE,
    description TEXT,
    package_type VARCHAR(50) DEFAULT 'bundle', -- 'bundle', 'maintenance', 'seasonal'
    
    -- Pricing
    total_price DECIMAL(10,2) NOT NULL,
    savings_amount DECIMAL(10,2) DEFAULT 0,
    currency VARCHAR(3) DEFAULT 'USD',
    
    -- Package Details
    estimated_duration_hours DECIMAL(4,2),
    validity_period_days INTEGER DEFAULT 365,
    max_uses INTEGER, -- For maintenance packages
    
    -- Status
    is_active BOOLEAN DEFAULT true,
    is_featured BOOLEAN DEFAULT false,
    available_from DATE,
    available_until DATE,
    
    -- Metadata
    terms_and_conditions TEXT,
    image_urls TEXT[],
    created_at TIMESTAMP WITH TIME ZONE DEFAULT CURRENT_TIMESTAMP,
    updated_at TIMESTAMP WITH TIME ZONE DEFAULT CURRENT_TIMESTAMP,
    
    CHECK (total_price >= 0),
    CHECK (savings_amount >= 0),
    CHECK (estimated_duration_hours > 0 OR estimated_duration_hours IS NULL)
);

CREATE INDEX idx_packages_active ON service_packages(is_active);
CREATE INDEX idx_packages_featured ON service_packages(is_featured);
CREATE INDEX idx_packages_availability ON service_packages(available_from, available_until);

CREATE TABLE package_services (
    id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    firestore_id VARCHAR(100) NOT NULL UNIQUE, -- the Firestore document ID
    package_id UUID NOT NULL REFERENCES service_packages(id) ON DELETE CASCADE,
    service_id UUID NOT NULL REFERENCES services(id) ON DELETE CASCADE,
    quantity INTEGER DEFAULT 1,
    included_price DECIMAL(10,2),
    is_optional BOOLEAN DEFAULT false,
    sort_order INTEGER DEFAULT 0,
    notes TEXT,
    
    UNIQUE(package_id, service_id),
    CHECK (quantity > 0),
    CHECK (included_price >= 0 OR included_price IS NULL)
);

CREATE INDEX idx_package_services_package ON package_services(package_id);
CREATE INDEX idx_package_services_service ON package_services(service_id);
