-- The sealed customer document of each payment created with a customer: the
-- same SealedData its create command carried on the commands topic, written
-- in the transaction that inserts the ingress_payments row. The query API
-- opens it while the customer's data key exists and answers an erasure
-- marker once the key was destroyed (customer_data_keys): erasure leaves
-- these bytes in place, unreadable like every other copy of them.
--
-- No foreign key to customer_data_keys: a create in flight must not hold a
-- lock that delays an erasure of the same customer.

CREATE TABLE ingress_payment_customers (
    payment_id   text PRIMARY KEY
                 REFERENCES ingress_payments (payment_id) ON DELETE CASCADE,
    customer_ref text NOT NULL CHECK (customer_ref ~ '^cus_[0-9a-f]{32}$'),
    data_key_id  text NOT NULL CHECK (data_key_id ~ '^dk_[0-9a-f]{32}$'),
    algorithm    text NOT NULL,
    nonce        bytea NOT NULL,
    ciphertext   bytea NOT NULL
);
CREATE INDEX ingress_payment_customers_customer ON ingress_payment_customers (customer_ref);
