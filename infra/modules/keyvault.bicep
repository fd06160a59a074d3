// Key Vault Premium holding the issuing CA key: EC P-384 generated inside the HSM,
// not exportable, usable for sign/verify only. RBAC authorization, soft delete and
// purge protection on; access is granted per key (see roles.bicep).

@description('Azure region.')
param location string

@description('Tags applied to every resource.')
param tags object

@description('Unique suffix for resource names.')
param resourceToken string

@description('Name of the issuing CA key.')
param issuingKeyName string

@allowed([
  'Enabled'
  'Disabled'
])
@description('Public network access of the vault.')
param publicNetworkAccess string

@minValue(7)
@maxValue(90)
@description('Soft-delete retention in days.')
param softDeleteRetentionInDays int = 90

resource vault 'Microsoft.KeyVault/vaults@2023-07-01' = {
  name: 'kv-${resourceToken}'
  location: location
  tags: tags
  properties: {
    tenantId: tenant().tenantId
    sku: {
      family: 'A'
      name: 'premium'
    }
    enableRbacAuthorization: true
    enableSoftDelete: true
    softDeleteRetentionInDays: softDeleteRetentionInDays
    enablePurgeProtection: true
    enabledForDeployment: false
    enabledForDiskEncryption: false
    enabledForTemplateDeployment: false
    publicNetworkAccess: publicNetworkAccess
    networkAcls: {
      bypass: 'AzureServices'
      defaultAction: publicNetworkAccess == 'Enabled' ? 'Allow' : 'Deny'
    }
  }
}

resource issuingKey 'Microsoft.KeyVault/vaults/keys@2023-07-01' = {
  parent: vault
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

output NAME string = vault.name
output KEY_NAME string = issuingKey.name
output KEY_ID string = issuingKey.properties.keyUriWithVersion
