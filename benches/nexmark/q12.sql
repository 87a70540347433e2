-- q12: bids per bidder in 10-second processing-time windows (p_time is PROCTIME() at ingest).
SELECT bidder, count(*) AS bid_count, window_start, window_end
FROM TUMBLE(${BID}, p_time, INTERVAL '10' SECOND)
GROUP BY bidder, window_start, window_end
