-- Which of two equal bids wins is arbitrary: compare what every winner shares.
SELECT id, price, bid_date_time FROM ${RESULT}
