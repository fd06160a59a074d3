// The issuing CA key in an existing, activated Managed HSM (keyStore = 'managedhsm').
// A Managed HSM must be activated (security domain downloaded) before keys exist, so
// this template does not create the HSM itself. Managed HSM data-plane access is local
// RBAC, which ARM cannot assign: scripts/post-deploy.sh grants "Managed HSM Crypto
// User" on /keys/<issuingKeyName> only to the function's identity.

@description('Name of the existing, activated Managed HSM.')
param managedHsmName string

@description('Name of the issuing CA key.')
param issuingKeyName string

resource hsm 'Microsoft.KeyVault/managedHSMs@2023-07-01' existing = {
  name: managedHsmName
}

resource issuingKey 'Microsoft.KeyVault/managedHSMs/keys@2023-07-01' = {
  parent: hsm
  name: issuingKeyName
  properties: {
    kty: 'EC-HSM'
    curveName: 'P-384'
    keyOps: [
      'sign'
      'verify'
    ]
    attributes: {
      enabled: true
      exportable: false
    }
  }
}

output KEY_NAME string = issuingKey.name
output KEY_ID string = issuingKey.properties.keyUriWithVersion
