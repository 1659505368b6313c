
3f2a9d’
api.shop%spiffe://cluster.local/ns/shop/sa/api
10.96.0.20"?
"χΐπυ"Έ**
10.0.0.7:15008*zone-a*
[fd00::8]:15008 "db.shop2shop/old8