-- q14: mid-priced bids in euros, bucketed by time of day, with the count of 'c' in extra.
SELECT auction, bidder, 0.908 * price AS price,
  CASE
    WHEN extract(hour FROM date_time) >= 8 AND extract(hour FROM date_time) <= 18 THEN 'dayTime'
    WHEN extract(hour FROM date_time) <= 6 OR extract(hour FROM date_time) >= 20 THEN 'nightTime'
    ELSE 'otherTime'
  END AS bidtimetype,
  date_time, extra,
  length(extra) - length(replace(extra, 'c', '')) AS c_counts
FROM ${BID}
WHERE 0.908 * price > 1000000 AND 0.908 * price < 50000000
