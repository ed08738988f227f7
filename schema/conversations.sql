-- Customer preferences and conversation history (seed 002_79d4b6b4fc6ed0be.txt, sections 1 and 2), as the
-- seed writes them, with two changes:
--   * customer_id has no REFERENCES customers(id): seed 002's own customers table differs from seed 000's
--     (schema/customers.sql), and these tables are audited on their own. Where both schemas live in one
--     database, add the foreign key to seed 000's customers(id) (both are UUIDs).
--   * conversations come first, because customer_preferences.learned_from_interaction_id references them.
-- The Firestore document IDs are the UUIDs of `id` (conversations/{id}, customers/{customer_id}/preferences/{id}).

CREATE TABLE conversations (
    id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    customer_id UUID NOT NULL, -- customers(id) of seed 000: see the header
    conversation_thread_id VARCHAR(255), -- Groups related messages
    external_id VARCHAR(255), -- Message ID from external system (Gmail, Twilio)
    
    -- Message Details
    medium VARCHAR(20) NOT NULL, -- 'email', 'sms', 'voice', 'chat'
    direction VARCHAR(10) NOT NULL, -- 'inbound', 'outbound'
    subject VARCHAR(500),
    content TEXT NOT NULL,
    content_type VARCHAR(50) DEFAULT 'text/plain',
    raw_content JSONB, -- Original message data
    
    -- Contact Information
    from_address VARCHAR(255),
    to_address VARCHAR(255),
    cc_addresses TEXT[], 
    bcc_addresses TEXT[],
    phone_number VARCHAR(20),
    
    -- Processing Status
    status VARCHAR(50) DEFAULT 'received', -- 'received', 'processing', 'processed', 'replied', 'failed'
    processing_stage VARCHAR(50), -- 'nlp_analysis', 'intent_classification', 'response_generation'
    
    -- NLP Analysis Results
    nlp_analysis JSONB, -- Full NLP analysis results
    intent VARCHAR(100),
    sentiment VARCHAR(20),
    priority VARCHAR(20),
    confidence_score DECIMAL(3,2),
    entities JSONB, -- Extracted entities
    keywords TEXT[],
    topics TEXT[],
    
    -- Response Information
    response_id UUID REFERENCES conversations(id), -- Links to outbound response
    response_template_used VARCHAR(100),
    response_generated_at TIMESTAMP WITH TIME ZONE,
    response_method VARCHAR(20), -- 'template', 'llm', 'human'
    
    -- Timing
    message_timestamp TIMESTAMP WITH TIME ZONE NOT NULL,
    received_at TIMESTAMP WITH TIME ZONE DEFAULT CURRENT_TIMESTAMP,
    processed_at TIMESTAMP WITH TIME ZONE,
    
    -- Metadata
    metadata JSONB,
    agent_id VARCHAR(50), -- Which agent processed this
    session_id VARCHAR(255), -- Groups conversations in a session
    
    -- Tracking
    created_at TIMESTAMP WITH TIME ZONE DEFAULT CURRENT_TIMESTAMP,
    updated_at TIMESTAMP WITH TIME ZONE DEFAULT CURRENT_TIMESTAMP,
    
    -- Constraints
    CHECK (direction IN ('inbound', 'outbound')),
    CHECK (medium IN ('email', 'sms', 'voice', 'chat', 'webhook')),
    CHECK (confidence_score IS NULL OR confidence_score BETWEEN 0.0 AND 1.0)
);

-- Indexes for conversations
CREATE INDEX idx_conversations_customer_id ON conversations(customer_id);
CREATE INDEX idx_conversations_thread_id ON conversations(conversation_thread_id);
CREATE INDEX idx_conversations_external_id ON conversations(external_id);
CREATE INDEX idx_conversations_medium ON conversations(medium);
CREATE INDEX idx_conversations_direction ON conversations(direction);
CREATE INDEX idx_conversations_status ON conversations(status);
CREATE INDEX idx_conversations_intent ON conversations(intent);
CREATE INDEX idx_conversations_timestamp ON conversations(message_timestamp DESC);
CREATE INDEX idx_conversations_session ON conversations(session_id);
CREATE INDEX idx_conversations_response ON conversations(response_id);

-- Composite indexes for common queries
CREATE INDEX idx_conversations_customer_medium_time ON conversations(customer_id, medium, message_timestamp DESC);
CREATE INDEX idx_conversations_status_priority ON conversations(status, priority);

CREATE TABLE conversation_attachments (
    id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    conversation_id UUID NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
    file_name VARCHAR(255) NOT NULL,
    file_type VARCHAR(100),
    file_size INTEGER,
    storage_path VARCHAR(500),
    content_id VARCHAR(255), -- For email inline attachments
    is_inline BOOLEAN DEFAULT false,
    checksum VARCHAR(64),
    virus_scan_status VARCHAR(20) DEFAULT 'pending',
    virus_scan_result JSONB,
    created_at TIMESTAMP WITH TIME ZONE DEFAULT CURRENT_TIMESTAMP,
    
    CHECK (file_size >= 0)
);

CREATE INDEX idx_attachments_conversation_id ON conversation_attachments(conversation_id);
CREATE INDEX idx_attachments_file_type ON conversation_attachments(file_type);

CREATE TABLE customer_preferences (
    id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    customer_id UUID NOT NULL, -- customers(id) of seed 000: see the header
    preference_type VARCHAR(50) NOT NULL,
    preference_key VARCHAR(100) NOT NULL,
    preference_value JSONB NOT NULL,
    confidence_score DECIMAL(3,2) DEFAULT 0.0 CHECK (confidence_score BETWEEN 0.0 AND 1.0),
    source VARCHAR(50) NOT NULL, -- 'explicit', 'learned', 'inferred', 'default'
    medium VARCHAR(20), -- 'email', 'sms', 'voice', 'general'
    context JSONB, -- Additional context data
    learned_from_interaction_id UUID REFERENCES conversations(id),
    learned_at TIMESTAMP WITH TIME ZONE DEFAULT CURRENT_TIMESTAMP,
    expires_at TIMESTAMP WITH TIME ZONE,
    is_active BOOLEAN DEFAULT true,
    priority INTEGER DEFAULT 1, -- 1=highest, 5=lowest
    created_at TIMESTAMP WITH TIME ZONE DEFAULT CURRENT_TIMESTAMP,
    updated_at TIMESTAMP WITH TIME ZONE DEFAULT CURRENT_TIMESTAMP,
    created_by VARCHAR(50) DEFAULT 'system',
    updated_by VARCHAR(50) DEFAULT 'system',
    
    UNIQUE(customer_id, preference_type, preference_key, medium)
);

-- Indexes for customer preferences
CREATE INDEX idx_customer_preferences_customer_id ON customer_preferences(customer_id);
CREATE INDEX idx_customer_preferences_type ON customer_preferences(preference_type);
CREATE INDEX idx_customer_preferences_active ON customer_preferences(is_active);
CREATE INDEX idx_customer_preferences_medium ON customer_preferences(medium);
CREATE INDEX idx_customer_preferences_confidence ON customer_preferences(confidence_score DESC);
CREATE INDEX idx_customer_preferences_priority ON customer_preferences(priority);
