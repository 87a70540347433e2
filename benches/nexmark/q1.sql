-- q1: convert each bid's price from dollars to euros.
SELECT auction, bidder, 0.908 * price AS price, date_time FROM ${BID}
