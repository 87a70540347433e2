-- Batch oracle of q11: sessions from gaps between consecutive bids of each bidder.
WITH gaps AS (
  SELECT bidder, date_time,
    CASE WHEN date_time - lag(date_time) OVER (PARTITION BY bidder ORDER BY date_time) < INTERVAL '10' SECOND
         THEN 0 ELSE 1 END AS starts_session
  FROM ${BID}),
sessions AS (
  SELECT bidder, date_time,
    sum(starts_session) OVER (PARTITION BY bidder ORDER BY date_time ROWS UNBOUNDED PRECEDING) AS session
  FROM gaps)
SELECT bidder, count(*) AS bid_count, min(date_time) AS starttime, max(date_time) + INTERVAL '10' SECOND AS endtime
FROM sessions GROUP BY bidder, session
