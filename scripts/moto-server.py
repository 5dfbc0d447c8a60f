"""moto in server mode on a free loopback port, as the object-store tests and
`make bench` use it: an S3-compatible test server, not a performance
reference. An access key is made through its IAM API (a user whose policy
allows S3), then moto is told to authenticate every request, so a request
signed wrongly, or with a key it does not know, is refused. Writes
"PORT ACCESS_KEY_ID SECRET" to READY_FILE once it serves, and ends with its
parent process.

    python3 scripts/moto-server.py READY_FILE
"""
import json
import os
import sys
import time
import urllib.request

import boto3
from moto.moto_server.threaded_moto_server import ThreadedMotoServer

server = ThreadedMotoServer(ip_address='127.0.0.1', port=0, verbose=False)
server.start()
port = server.get_host_and_port()[1]
url = 'http://127.0.0.1:%d' % port
iam = boto3.client('iam', endpoint_url=url, region_name='us-east-1', aws_access_key_id='setup', aws_secret_access_key='setup')
iam.create_user(UserName='backupd')
iam.put_user_policy(UserName='backupd', PolicyName='objects', PolicyDocument=json.dumps(
    {'Version': '2012-10-17', 'Statement': [{'Effect': 'Allow', 'Action': 's3:*', 'Resource': '*'}]}))
key = iam.create_access_key(UserName='backupd')['AccessKey']
# From here on every request must be signed by a key moto knows, with a policy that allows it.
urllib.request.urlopen(urllib.request.Request(url + '/moto-api/reset-auth', data=b'0', method='POST',
                                              headers={'Content-Type': 'text/plain'}))
with open(sys.argv[1] + '.part', 'w') as f:
    f.write('%d %s %s\n' % (port, key['AccessKeyId'], key['SecretAccessKey']))
os.rename(sys.argv[1] + '.part', sys.argv[1])
parent = os.getppid()
while os.getppid() == parent:
    time.sleep(0.5)
