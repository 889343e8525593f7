-- quantlens:
--   description: 52-week high and low close per symbol and day, and the distance from the high
--   materialize: incremental_by_month
--   time_column: date
--   checks:
--     - not_null: [symbol, date, high_52w, low_52w]
--     - unique: [symbol, date]
--     - accepted_range: {column: high_52w, min: 0}
--     - sql: SELECT * FROM this WHERE low_52w > high_52w   # rows returned = failure
--     - {not_null: [pct_from_high], blocking: false}       # a warning, not a veto
--
-- The window spans 252 trading days; reading 380 calendar days before $start gives every row
-- of the recomputed months its whole window, so an incremental run equals a full refresh.
SELECT symbol, date, close,
       max(close) OVER w AS high_52w,
       min(close) OVER w AS low_52w,
       close / max(close) OVER w - 1 AS pct_from_high
FROM silver_prices
WHERE date >= $start - INTERVAL 380 DAY AND date <= $end
WINDOW w AS (PARTITION BY symbol ORDER BY date ROWS BETWEEN 251 PRECEDING AND CURRENT ROW)
