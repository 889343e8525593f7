-- quantlens:
--   description: Per symbol, its latest day - last close, 1-month and 1-year return, 20-day volatility
--   materialize: table
--   checks:
--     - unique: [symbol]
--     - not_null: [symbol, as_of, last_close]
--     - accepted_range: {column: last_close, min: 0}
--     - name: returns_within_reason
--       sql: SELECT * FROM this WHERE abs(return_1m) > 5 OR abs(return_1y) > 50
--       blocking: false
--
-- A month is 21 trading days back, a year 252: one pass keeps each symbol's last 253 closes,
-- newest first (a list index past its end is NULL). Only the last 400 days are read: a symbol
-- with no trade in that time is no longer listed here.
WITH recent AS (
    SELECT symbol,
           max(date) AS as_of,
           max_by(close, date, 253) AS closes,
           arg_max(vol_20, date) AS vol_20
    FROM gold_returns
    WHERE date >= (SELECT max(date) FROM gold_returns) - INTERVAL 400 DAY
    GROUP BY symbol
)
SELECT symbol,
       as_of,
       closes[1] AS last_close,
       closes[1] / closes[22] - 1 AS return_1m,
       closes[1] / closes[253] - 1 AS return_1y,
       vol_20
FROM recent
ORDER BY symbol
