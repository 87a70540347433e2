-- q5 (aggregate part): bids per auction in 10-second windows sliding every 2 seconds.
SELECT auction, count(*) AS num, window_start, window_end
FROM HOP(${BID}, date_time, INTERVAL '2' SECOND, INTERVAL '10' SECOND)
GROUP BY auction, window_start, window_end
