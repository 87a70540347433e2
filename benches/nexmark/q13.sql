-- q13: bids enriched from a side table looked up as of processing time.
SELECT B.auction, B.bidder, B.price, B.date_time, S.value
FROM ${BID} B
JOIN side_input FOR SYSTEM_TIME AS OF PROCTIME() S ON mod(B.auction, 10000) = S.key
