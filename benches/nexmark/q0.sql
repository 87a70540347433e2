-- q0: pass-through of bids (source and sink overhead).
SELECT auction, bidder, price, date_time FROM ${BID}
