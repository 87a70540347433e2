-- q11: bids per bidder per session (sessions end after 10 seconds without a bid).
SELECT bidder, count(*) AS bid_count, window_start AS starttime, window_end AS endtime
FROM SESSION(${BID}, date_time, INTERVAL '10' SECOND)
GROUP BY bidder, window_start, window_end
