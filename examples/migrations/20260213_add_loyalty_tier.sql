-- The reference request's migration. Submit its text as `sql` in execute_migration.
ALTER TABLE customers
ADD COLUMN loyalty_tier VARCHAR(20) DEFAULT 'bronze'
NOT NULL;

CREATE INDEX idx_loyalty_tier ON customers(loyalty_tier);
