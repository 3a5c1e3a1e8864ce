# Build-Help's XML work: merges each hand-written MAML fragment (prose: synopsis, descriptions, examples, links)
# with the compiled cmdlet's metadata (from Get-CmdletHelpMetadata.ps1), so that the syntax, each parameter's
# type, required/position, pipeline input, aliases, wildcard support and default, and the online link, are
# generated from the code and cannot drift from it. A hand-written default wins only where the cmdlet object has
# no default of its own (None, 0, False): "A random seed", "Each base tensor's dtype".

$script:MamlNamespaces = @{
    maml = 'http://schemas.microsoft.com/maml/2004/10'
    command = 'http://schemas.microsoft.com/maml/dev/command/2004/10'
    dev = 'http://schemas.microsoft.com/maml/dev/2004/10'
}

# Standard words for the two optional common parameters, where a fragment does not describe them itself.
$script:StandardDescriptions = @{
    WhatIf = 'Shows what would happen if the cmdlet runs. The cmdlet is not run.'
    Confirm = 'Prompts you for confirmation before running the cmdlet.'
}

function New-MamlElement([xml] $Document, [string] $QualifiedName, [string] $Text) {
    $prefix, $local = $QualifiedName -split ':'
    $element = $Document.CreateElement($prefix, $local, $script:MamlNamespaces[$prefix])
    if ($PSBoundParameters.ContainsKey('Text')) { $element.InnerText = $Text }
    $element
}

function New-ParameterElement([xml] $Document, $Parameter, [bool] $Required, [string] $Position) {
    $element = New-MamlElement $Document 'command:parameter'
    $element.SetAttribute('required', $Required.ToString().ToLowerInvariant())
    $element.SetAttribute('variableLength', $Parameter.IsArray.ToString().ToLowerInvariant())
    $element.SetAttribute('globbing', $Parameter.Globbing.ToString().ToLowerInvariant())
    $element.SetAttribute('pipelineInput', $Parameter.PipelineInput)
    $element.SetAttribute('position', $Position)
    $element.SetAttribute('aliases', $Parameter.Aliases)
    $null = $element.AppendChild((New-MamlElement $Document 'maml:name' $Parameter.Name))
    $element
}

function Add-ParameterValue([xml] $Document, [System.Xml.XmlElement] $Element, $Parameter) {
    if ($Parameter.IsSwitch) { return }
    if ($Parameter.ValidValues.Count) {
        $group = New-MamlElement $Document 'command:parameterValueGroup'
        foreach ($value in $Parameter.ValidValues) {
            $item = New-MamlElement $Document 'command:parameterValue' $value
            $item.SetAttribute('required', 'false'); $item.SetAttribute('variableLength', 'false')
            $null = $group.AppendChild($item)
        }
        $null = $Element.AppendChild($group)
    }
    $value = New-MamlElement $Document 'command:parameterValue' $Parameter.Type
    $value.SetAttribute('required', 'true'); $value.SetAttribute('variableLength', $Parameter.IsArray.ToString().ToLowerInvariant())
    $null = $Element.AppendChild($value)
}

# One fragment's text, completed from $Metadata (one command's entry). Throws on a fragment that names no
# compiled cmdlet.
function Complete-HelpFragment([string] $Text, $Metadata, [string] $FragmentName) {
    $document = [xml]"<helpItems xmlns:maml='$($MamlNamespaces.maml)' xmlns:command='$($MamlNamespaces.command)' xmlns:dev='$($MamlNamespaces.dev)'>$Text</helpItems>"
    $ns = [System.Xml.XmlNamespaceManager]::new($document.NameTable)
    foreach ($key in $MamlNamespaces.Keys) { $ns.AddNamespace($key, $MamlNamespaces[$key]) }
    $command = $document.SelectSingleNode('/helpItems/command:command', $ns)
    if (-not $Metadata) { throw "Help fragment $FragmentName names no cmdlet of the module." }

    # Syntax: one item per parameter set, default set first, positional parameters in order, then the rest.
    $syntax = $command.SelectSingleNode('command:syntax', $ns)
    if (-not $syntax) { $syntax = $command.InsertAfter((New-MamlElement $document 'command:syntax'), $command.SelectSingleNode('maml:description', $ns)) }
    $syntax.RemoveAll()
    $byName = @{}; foreach ($p in $Metadata.Parameters) { $byName[$p.Name] = $p }
    foreach ($set in $Metadata.ParameterSets) {
        $item = New-MamlElement $document 'command:syntaxItem'
        $null = $item.AppendChild((New-MamlElement $document 'maml:name' $Metadata.Name))
        $ordered = @($set.Parameters | Sort-Object { if ($_.Position -eq 'named') { 1000 } else { [int] $_.Position } }, { -not $_.Required })
        foreach ($entry in $ordered) {
            $parameter = $byName[$entry.Name]
            $element = New-ParameterElement $document $parameter $entry.Required $entry.Position
            Add-ParameterValue $document $element $parameter
            $null = $item.AppendChild($element)
        }
        $null = $syntax.AppendChild($item)
    }

    # Parameters: the fragment's description, everything else from the metadata.
    $parameters = $command.SelectSingleNode('command:parameters', $ns)
    if (-not $parameters) { $parameters = $command.InsertAfter((New-MamlElement $document 'command:parameters'), $syntax) }
    $fragmentParameters = @{}
    foreach ($old in @($parameters.SelectNodes('command:parameter', $ns))) {
        $fragmentParameters[$old.SelectSingleNode('maml:name', $ns).InnerText] = $old
        $null = $parameters.RemoveChild($old)
    }
    foreach ($parameter in $Metadata.Parameters | Sort-Object Name) {
        $old = $fragmentParameters[$parameter.Name]
        $positions = @($Metadata.ParameterSets.Parameters | Where-Object Name -eq $parameter.Name | ForEach-Object Position | Sort-Object -Unique)
        $element = New-ParameterElement $document $parameter $parameter.Required $(if ($positions.Count -eq 1) { $positions[0] } else { 'named' })
        $description = if ($old) { $old.SelectSingleNode('maml:description', $ns) }
        if ($description) { $null = $element.AppendChild($description) }
        elseif ($StandardDescriptions[$parameter.Name]) {
            $description = $element.AppendChild((New-MamlElement $document 'maml:description'))
            $null = $description.AppendChild((New-MamlElement $document 'maml:para' $StandardDescriptions[$parameter.Name]))
        }
        $value = New-MamlElement $document 'command:parameterValue' $parameter.Type
        $value.SetAttribute('required', (-not $parameter.IsSwitch).ToString().ToLowerInvariant()); $value.SetAttribute('variableLength', $parameter.IsArray.ToString().ToLowerInvariant())
        $null = $element.AppendChild($value)
        $type = $element.AppendChild((New-MamlElement $document 'dev:type'))
        $null = $type.AppendChild((New-MamlElement $document 'maml:name' $parameter.TypeFullName))
        $oldDefault = if ($old) { $old.SelectSingleNode('dev:defaultValue', $ns) }
        $written = if ($oldDefault) { $oldDefault.InnerText.Trim() }
        $default = if ($written -and $parameter.Default -in 'None', '0', 'False') { $written } else { $parameter.Default }
        $null = $element.AppendChild((New-MamlElement $document 'dev:defaultValue' $default))
        $null = $parameters.AppendChild($element)
    }

    # The online link: Get-Help -Online opens the first related link, so it is the cmdlet's HelpUri.
    if ($Metadata.HelpUri) {
        $links = $command.SelectSingleNode('command:relatedLinks', $ns)
        if (-not $links) { $links = $command.AppendChild((New-MamlElement $document 'command:relatedLinks')) }
        $online = New-MamlElement $document 'maml:navigationLink'
        $null = $online.AppendChild((New-MamlElement $document 'maml:linkText' 'Online Version:'))
        $null = $online.AppendChild((New-MamlElement $document 'maml:uri' $Metadata.HelpUri))
        $null = $links.PrependChild($online)
    }
    $command.OuterXml
}
