-- q4: average closing price per category (closing price: the highest bid while open).
SELECT Q.category, avg(Q.final) AS avg
FROM (
  SELECT max(B.price) AS final, A.category
  FROM ${AUCTION} A, ${BID} B
  WHERE A.id = B.auction AND B.date_time BETWEEN A.date_time AND A.expires
  GROUP BY A.id, A.category
) Q
GROUP BY Q.category
