DESCRIPTION="small GET with an allowed Origin through twin routes of one process: plain (ringgate-plain), with a CORS policy (ringgate-cors: the origin judged, five headers added) and behind an IP rule of 1 000 networks (ringgate-iprule): what each edge policy costs"
TOOL=wrk
REQUEST_PATH=/api/items
CONNECTIONS=64
HEADER="Origin: https://shop.example.org"
TARGETS_ONLY="ringgate-plain ringgate-cors ringgate-iprule"
