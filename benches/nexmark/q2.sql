-- q2: bids on a handful of auctions.
SELECT auction, price FROM ${BID}
WHERE auction = 1007 OR auction = 1020 OR auction = 2001 OR auction = 2019 OR auction = 2087
