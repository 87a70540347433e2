-- q19: the ten highest bids of each auction.
SELECT * FROM (
  SELECT auction, bidder, price, channel, url, date_time, extra,
         ROW_NUMBER() OVER (PARTITION BY auction ORDER BY price DESC) AS rank_number
  FROM ${BID}
)
WHERE rank_number <= 10
