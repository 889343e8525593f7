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
-- A month is 21 trading days back, a year 252. Only the last 400 days are read: a symbol with
-- no trade in that time is no longer listed here.
WITH recent AS (
    SELECT symbol, date, close, vol_20,
           row_number() OVER (PARTITION BY symbol ORDER BY date DESC) AS days_back
    FROM gold_returns
    WHERE date >= (SELECT max(date) FROM gold_returns) - INTERVAL 400 DAY
)
SELECT latest.symbol,
       latest.date AS as_of,
       latest.close AS last_close,
       latest.close / month_ago.close - 1 AS return_1m,
       latest.close / year_ago.close - 1 AS return_1y,
       latest.vol_20
FROM recent AS latest
LEFT JOIN recent AS month_ago ON month_ago.symbol = latest.symbol AND month_ago.days_back = 22
LEFT JOIN recent AS year_ago ON year_ago.symbol = latest.symbol AND year_ago.days_back = 253
WHERE latest.days_back = 1
ORDER BY latest.symbol
