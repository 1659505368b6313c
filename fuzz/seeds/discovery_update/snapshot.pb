
3f2a9c’
api.shop%spiffe://cluster.local/ns/shop/sa/api
10.96.0.20"?
"χΐπυ"Έ**
10.0.0.7:15008*zone-a*
[fd00::8]:15008 *ω
shopapiAuthorizationPolicy shop/api"ΝapiVersion: airlock.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: api, namespace: shop}
spec:
  action: ALLOW
  rules:
  - from: [{source: {principals: [spiffe://cluster.local/ns/shop/sa/web]}}]
