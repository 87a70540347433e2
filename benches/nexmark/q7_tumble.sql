-- q7 (aggregate part): the highest bid of every 10-second window, emitted when it closes.
SELECT window_start, window_end, max(price) AS maxprice
FROM TUMBLE(${BID}, date_time, INTERVAL '10' SECOND)
GROUP BY window_start, window_end
EMIT ON WINDOW CLOSE
